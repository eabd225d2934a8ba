"""Configuration: a full valid file, every kind of mistake named precisely, the environment shortcut."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kcl_app.config import Config, from_env, load, load_transform
from kcl_app.core.errors import ConfigError

FULL = """
unmapped = "park"
precision = "MICROSECOND"
stream_retention_hours = 168
tombstone_margin_hours = 12

[source]
region = "us-east-1"
table = "orders"
endpoint_url = "http://127.0.0.1:4566"

[metrics]
namespace = "tablesync-test"

[dead_letter]
kind = "dir"
path = "/var/lib/tablesync/dead-letters"

[defaults]
mode = "exact"
retry_budget_seconds = 45
exclude = ["internal_notes"]

[[targets]]
name = "eu"
region = "eu-west-1"
table = "orders-eu"
role_arn = "arn:aws:iam::123456789012:role/tablesync-writer"
external_id = "shared-secret"
ledger_table = "orders-eu-ledger"
create_ledger = false
ttl_deletes = "skip"
include = ["status", "total"]
transform = "copy:deepcopy"
max_concurrency = 8

[[targets]]
name = "staging"
source_table = "orders-v2"
region = "ap-southeast-2"
table = "orders-staging"
endpoint_url = "http://127.0.0.1:4567"
mode = "inline"
version_attribute = "_v"
retry_budget_seconds = 5.5

[targets.dead_letter]
kind = "sqs"
queue_url = "https://sqs.ap-southeast-2.amazonaws.com/123456789012/tablesync-staging"
region = "ap-southeast-2"
payload_bucket = "tablesync-staging-dead-letters"
"""


def write(tmp_path: Path, text: str, name: str = "tablesync.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL_TARGET = '[[targets]]\nname = "t"\nsource_table = "src"\nregion = "eu-west-1"\ntable = "dst"\n'


def test_a_full_file_is_read_completely(tmp_path) -> None:
    cfg = load(write(tmp_path, FULL))
    assert isinstance(cfg, Config)
    assert cfg.unmapped == "park" and cfg.precision == "MICROSECOND"
    assert cfg.stream_retention_hours == 168 and cfg.tombstone_margin_hours == 12
    assert cfg.tombstone_ttl_seconds == (168 + 12) * 3600
    assert cfg.source_region == "us-east-1" and cfg.source_endpoint_url == "http://127.0.0.1:4566"
    assert cfg.metrics_namespace == "tablesync-test"
    eu, staging = cfg.targets
    assert (eu.name, eu.source_table, eu.region, eu.table) == ("eu", "orders", "eu-west-1", "orders-eu")
    assert eu.role_arn == "arn:aws:iam::123456789012:role/tablesync-writer" and eu.external_id == "shared-secret"
    assert eu.mode == "exact" and eu.ledger == "orders-eu-ledger" and eu.create_ledger is False
    assert eu.ttl_deletes == "skip" and eu.include == ("status", "total") and eu.exclude == ("internal_notes",)
    assert eu.transform == "copy:deepcopy" and eu.retry_budget_seconds == 45.0 and eu.max_concurrency == 8
    assert eu.dead_letter.kind == "dir" and eu.dead_letter.path == "/var/lib/tablesync/dead-letters"
    assert staging.source_table == "orders-v2" and staging.mode == "inline" and staging.version_attribute == "_v"
    assert staging.endpoint_url == "http://127.0.0.1:4567" and staging.retry_budget_seconds == 5.5
    assert staging.ledger == "orders-staging.tablesync-ledger"
    assert staging.dead_letter.kind == "sqs" and staging.dead_letter.region == "ap-southeast-2"
    assert staging.dead_letter.queue_url.endswith("/tablesync-staging")
    assert staging.dead_letter.payload_bucket == "tablesync-staging-dead-letters"
    assert staging.dead_letter.payload_prefix == "tablesync/dead-letters/"
    assert cfg.target("staging") is staging
    rules = cfg.rules()
    assert [r.name for r in rules] == ["eu", "staging"]
    assert rules[0].transform is not None and rules[0].include == ("status", "total")
    item = {"pk": {"S": "a"}}
    assert rules[0].transform(item) == item


def test_defaults_of_a_minimal_file(tmp_path) -> None:
    cfg = load(write(tmp_path, MINIMAL_TARGET))
    (t,) = cfg.targets
    assert cfg.unmapped == "skip" and cfg.precision == "auto" and cfg.metrics_namespace == "tablesync"
    assert cfg.stream_retention_hours == 24 and cfg.tombstone_margin_hours == 24
    assert t.mode == "exact" and t.create_ledger and t.ledger == "dst.tablesync-ledger"
    assert t.ttl_deletes == "replicate" and t.include is None and t.exclude == () and t.transform is None
    assert t.retry_budget_seconds == 30 and t.max_concurrency == 4 and t.version_attribute == "_tablesync_version"
    assert t.dead_letter.kind == "dir" and t.dead_letter.path == ".tablesync/dead-letters"


def test_unknown_target_name_is_refused(tmp_path) -> None:
    cfg = load(write(tmp_path, MINIMAL_TARGET))
    with pytest.raises(ConfigError, match=r"no target named 'x' \(known: \['t'\]\)"):
        cfg.target("x")


BAD = [
    ("unmaped = 'skip'\n" + MINIMAL_TARGET, "unmaped: unknown key (did you mean 'unmapped'?)"),
    (MINIMAL_TARGET + "tabel = 'x'\n", "targets[0].tabel: unknown key (did you mean 'table'?)"),
    (MINIMAL_TARGET + "zzz = 1\n", "targets[0].zzz: unknown key"),
    ("[defaults]\nname = 'x'\n" + MINIMAL_TARGET, "defaults.name: unknown key"),
    ("[source]\nregoin = 'us-east-1'\n" + MINIMAL_TARGET, "source.regoin: unknown key (did you mean 'region'?)"),
    ("[metrics]\nnamespce = 'x'\n" + MINIMAL_TARGET, "metrics.namespce: unknown key (did you mean 'namespace'?)"),
    (MINIMAL_TARGET + "[targets.dead_letter]\nqueue = 'x'\n", "targets[0].dead_letter.queue: unknown key"),
    ("unmapped = 'skip'\n", "targets: required"),
    ("targets = []\n", "targets: at least one [[targets]] entry is required"),
    ("targets = ['a']\n", "targets[0]: must be a table ([[targets]])"),
    ('[[targets]]\nname = "t"\nsource_table = "src"\ntable = "dst"\n', "targets[0].region: required"),
    ('[[targets]]\nname = "t"\nsource_table = "src"\nregion = "eu-west-1"\n', "targets[0].table: required"),
    ('[[targets]]\nname = "t"\nregion = "eu-west-1"\ntable = "dst"\n', "targets[0].source_table: required"),
    ('[[targets]]\nsource_table = "src"\nregion = "eu-west-1"\ntable = "dst"\n', "targets[0].name: required"),
    (MINIMAL_TARGET.replace('"eu-west-1"', "1"), "targets[0].region: must be str, got int"),
    (MINIMAL_TARGET.replace('"eu-west-1"', '"Europe"'), "targets[0].region: 'Europe' is not an AWS region name"),
    (MINIMAL_TARGET.replace('"eu-west-1"', '"eu-west"'), "targets[0].region: 'eu-west' is not an AWS region name"),
    (MINIMAL_TARGET.replace('"dst"', '"a b"'), "targets[0].table: 'a b' is not a valid DynamoDB table name"),
    (MINIMAL_TARGET.replace('"dst"', '"ab"'), "targets[0].table: 'ab' is not a valid DynamoDB table name"),
    (MINIMAL_TARGET.replace('"src"', '"s/x"'), "targets[0].source_table: 's/x' is not a valid DynamoDB table name"),
    (MINIMAL_TARGET.replace('"t"', '"a.b"'), "targets[0].name: 'a.b': use 1-64 letters"),
    (MINIMAL_TARGET + MINIMAL_TARGET.replace('"dst"', '"dst2"'), "targets: target name 't' is used more than once"),
    (MINIMAL_TARGET + MINIMAL_TARGET.replace('"t"', '"u"'),
     "targets: two targets write the same table 'dst' in eu-west-1"),
    (MINIMAL_TARGET + "mode = 'fast'\n", "targets[0].mode: must be one of exact, inline; got 'fast'"),
    (MINIMAL_TARGET + "ttl_deletes = 'drop'\n", "targets[0].ttl_deletes: must be one of replicate, skip"),
    ("unmapped = 'drop'\n" + MINIMAL_TARGET, "unmapped: must be one of skip, park; got 'drop'"),
    ("precision = 'SECOND'\n" + MINIMAL_TARGET, "precision: must be one of auto, MILLISECOND, MICROSECOND"),
    (MINIMAL_TARGET + "[targets.dead_letter]\nkind = 'sqs'\n",
     "targets[0].dead_letter.queue_url: required when kind = 'sqs'"),
    (MINIMAL_TARGET + "[targets.dead_letter]\nkind = 's3'\n", "targets[0].dead_letter.kind: must be one of dir, sqs"),
    (MINIMAL_TARGET + "[targets.dead_letter]\npayload_bucket = 'b'\n",
     "targets[0].dead_letter.payload_bucket: only used when kind = 'sqs'"),
    (MINIMAL_TARGET + "dead_letter = 'dir'\n", "targets[0].dead_letter: must be a table"),
    ("dead_letter = 'dir'\n" + MINIMAL_TARGET, "dead_letter: must be dict, got str"),
    (MINIMAL_TARGET + "transform = 'no_such_module_xyz:f'\n",
     "targets[0].transform: cannot import module 'no_such_module_xyz'"),
    (MINIMAL_TARGET + "transform = 'json:no_such_function'\n",
     "targets[0].transform: 'json' has no callable 'no_such_function'"),
    (MINIMAL_TARGET + "transform = 'json'\n", "targets[0].transform: 'json' must be 'module:function'"),
    ("stream_retention_hours = 12\n" + MINIMAL_TARGET,
     "stream_retention_hours: must be between 24 and 8760 (Kinesis limits), got 12.0"),
    ("stream_retention_hours = 9000\n" + MINIMAL_TARGET, "stream_retention_hours: must be between 24 and 8760"),
    ("stream_retention_hours = true\n" + MINIMAL_TARGET, "stream_retention_hours: must be a number"),
    ("tombstone_margin_hours = 0.5\n" + MINIMAL_TARGET, "tombstone_margin_hours: must be at least 1 hour"),
    (MINIMAL_TARGET + "retry_budget_seconds = 0\n", "targets[0].retry_budget_seconds: must be in (0, 3600]"),
    (MINIMAL_TARGET + "retry_budget_seconds = '30'\n", "targets[0].retry_budget_seconds: must be int/float, got str"),
    (MINIMAL_TARGET + "max_concurrency = 65\n", "targets[0].max_concurrency: must be between 1 and 64"),
    (MINIMAL_TARGET + "max_concurrency = 4.0\n", "targets[0].max_concurrency: must be int, got float"),
    (MINIMAL_TARGET + "max_writes_per_second = 0\n", "targets[0].max_writes_per_second: must be in (0, 1000000]"),
    (MINIMAL_TARGET + "max_writes_per_second = nan\n", "targets[0].max_writes_per_second: must be a finite number"),
    (MINIMAL_TARGET + "max_writes_per_second = true\n", "targets[0].max_writes_per_second: must be a number"),
    (MINIMAL_TARGET + "heal_rate = inf\n", "targets[0].heal_rate: must be a finite number"),
    (MINIMAL_TARGET + "create_ledger = 1\n", "targets[0].create_ledger: must be bool, got int"),
    (MINIMAL_TARGET + "include = ['a', '']\n", "targets[0].include: must be a list of attribute names"),
    (MINIMAL_TARGET + "exclude = 'secret'\n", "targets[0].exclude: must be list, got str"),
    (MINIMAL_TARGET + "role_arn = 'my-role'\n", "targets[0].role_arn: 'my-role' is not an IAM role ARN"),
    (MINIMAL_TARGET + "external_id = 'x'\n", "targets[0].external_id: only meaningful with role_arn"),
    ("[defaults]\nregion = 'moon-1'\n" + MINIMAL_TARGET.replace('region = "eu-west-1"\n', ""),
     "defaults.region: 'moon-1' is not an AWS region name"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_each_mistake_names_the_file_the_key_and_the_problem(tmp_path, text, message) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_the_second_target_is_named_by_its_index(tmp_path) -> None:
    second = MINIMAL_TARGET.replace('"t"', '"u"').replace('"dst"', '"dst2"').replace('"eu-west-1"', '"x"')
    text = MINIMAL_TARGET + second
    with pytest.raises(ConfigError, match=r"targets\[1\]\.region: 'x' is not an AWS region name"):
        load(write(tmp_path, text))


def test_invalid_toml_and_missing_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"invalid TOML"):
        load(write(tmp_path, "targets = [\n"))
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read"):
        load(missing)


def test_load_transform() -> None:
    import copy

    assert load_transform("copy:deepcopy") is copy.deepcopy
    with pytest.raises(ConfigError, match="must be 'module:function'"):
        load_transform(":f")


ENV = {"TABLESYNC_SOURCE_TABLE": "orders", "TABLESYNC_TARGET_TABLE": "orders-copy",
       "TABLESYNC_TARGET_REGION": "eu-west-1"}


def test_the_environment_shortcut_configures_one_target() -> None:
    cfg = from_env(ENV)
    (t,) = cfg.targets
    assert (t.name, t.source_table, t.table, t.region, t.mode) == (
        "target", "orders", "orders-copy", "eu-west-1", "exact")
    assert cfg.origin == "environment"


def test_the_environment_shortcut_with_every_option() -> None:
    cfg = from_env({**ENV, "TABLESYNC_TARGET_NAME": "prod", "TABLESYNC_TARGET_ENDPOINT": "http://127.0.0.1:1",
                    "TABLESYNC_TARGET_ROLE_ARN": "arn:aws:iam::123456789012:role/r",
                    "TABLESYNC_TARGET_EXTERNAL_ID": "x",
                    "TABLESYNC_TARGET_MODE": "inline", "TABLESYNC_DEAD_LETTER_DIR": "/tmp/dl",
                    "TABLESYNC_STREAM_RETENTION_HOURS": "168"})
    (t,) = cfg.targets
    assert (t.name, t.endpoint_url, t.role_arn, t.external_id, t.mode) == (
        "prod", "http://127.0.0.1:1", "arn:aws:iam::123456789012:role/r", "x", "inline")
    assert t.dead_letter.kind == "dir" and t.dead_letter.path == "/tmp/dl"
    assert cfg.stream_retention_hours == 168 and t.tombstones == "orders-copy.tablesync-tombstones"


def test_an_inline_target_makes_the_user_name_the_stream_retention(tmp_path) -> None:
    """Its tombstones cover the retention + margin: a silent default would be a silently weaker fence."""
    inline = MINIMAL_TARGET + 'mode = "inline"\n'
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, inline))
    assert "stream_retention_hours: required with an inline target" in str(caught.value)
    with pytest.raises(ConfigError, match="TABLESYNC_STREAM_RETENTION_HOURS: must be a number"):
        from_env({**ENV, "TABLESYNC_TARGET_MODE": "inline", "TABLESYNC_STREAM_RETENTION_HOURS": "a week"})
    with pytest.raises(ConfigError, match="stream_retention_hours: required"):
        from_env({**ENV, "TABLESYNC_TARGET_MODE": "inline"})
    cfg = load(write(tmp_path, "stream_retention_hours = 72\n" + inline))
    assert cfg.targets[0].tombstones == f"{cfg.targets[0].table}.tablesync-tombstones"
    assert load(write(tmp_path, MINIMAL_TARGET)).stream_retention_hours == 24  # exact targets keep the default


def test_the_tombstone_table_is_validated(tmp_path) -> None:
    inline = "stream_retention_hours = 24\n" + MINIMAL_TARGET + 'mode = "inline"\n'
    assert load(write(tmp_path, inline + 'tombstone_table = "tomb-1"\n')).targets[0].tombstones == "tomb-1"
    with pytest.raises(ConfigError, match=r"targets\[0\]\.tombstone_table: 'no way' is not a valid"):
        load(write(tmp_path, inline + 'tombstone_table = "no way"\n'))
    long_table = inline.replace('\ntable = "', '\ntable = "' + "t" * 240, 1) + 'ledger_table = "unused"\n'
    with pytest.raises(ConfigError, match=r"tombstone_table: the default .* longer than 255 characters: set it"):
        load(write(tmp_path, long_table))


def test_the_environment_shortcut_falls_back_to_the_aws_region() -> None:
    env = {k: v for k, v in ENV.items() if k != "TABLESYNC_TARGET_REGION"}
    assert from_env({**env, "AWS_REGION": "us-west-2"}).targets[0].region == "us-west-2"
    assert from_env({**env, "AWS_DEFAULT_REGION": "us-east-2"}).targets[0].region == "us-east-2"


@pytest.mark.parametrize(
    ("drop", "extra", "message"),
    [
        ("TABLESYNC_TARGET_TABLE", {}, "environment: no --config given and TABLESYNC_TARGET_TABLE is not set"),
        ("TABLESYNC_SOURCE_TABLE", {}, "environment: TABLESYNC_SOURCE_TABLE: required"),
        ("TABLESYNC_TARGET_REGION", {}, "environment: TABLESYNC_TARGET_REGION: required"),
        ("", {"TABLESYNC_TARGET_MODE": "fast"}, "environment: targets[0].mode: must be one of exact, inline"),
    ],
)
def test_the_environment_shortcut_names_what_is_missing(drop, extra, message) -> None:
    env = {k: v for k, v in ENV.items() if k != drop} | extra
    with pytest.raises(ConfigError) as caught:
        from_env(env)
    assert message in str(caught.value)


def test_the_example_of_the_configuration_reference_is_valid(tmp_path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    assert 'transform = "myco.masking:mask_customer"' in example
    cfg = load(write(tmp_path, example.replace("myco.masking:mask_customer", "copy:deepcopy")))
    assert [t.name for t in cfg.targets] == ["prod-eu", "staging"]
    assert cfg.targets[0].source_table == "orders" and cfg.targets[0].retry_budget_seconds == 60
    assert cfg.targets[1].exclude == ("internal_notes",) and cfg.targets[1].mode == "inline"


# -- the gaps closed for untrusted configuration: each names the file and the key ------------------
GAPS = [
    ("tombstone_margin_hours = nan\n" + MINIMAL_TARGET, "tombstone_margin_hours: must be a finite number"),
    ("tombstone_margin_hours = inf\n" + MINIMAL_TARGET, "tombstone_margin_hours: must be a finite number"),
    ("stream_retention_hours = nan\n" + MINIMAL_TARGET, "stream_retention_hours: must be a finite number"),
    (MINIMAL_TARGET + "retry_budget_seconds = inf\n", "targets[0].retry_budget_seconds: must be a finite number"),
    (MINIMAL_TARGET + "version_attribute = ''\n", "targets[0].version_attribute: must be a non-empty attribute"),
    ('stream_retention_hours = 24\n[source.key_schema]\nsrc = ["pk:S"]\n' + MINIMAL_TARGET
     + "mode = 'inline'\nversion_attribute = 'pk'\n",
     "targets[0].version_attribute: 'pk' is a key attribute of src"),
    (MINIMAL_TARGET + "role_arn = 'arn:aws:iam::12345:role/x'\n",
     "targets[0].role_arn: 'arn:aws:iam::12345:role/x' is not an IAM role ARN"),
    (MINIMAL_TARGET + "role_arn = 'arn:aws:s3:::123456789012:role/x'\n", "targets[0].role_arn:"),
    (MINIMAL_TARGET + "role_arn = 'arn:aws:iam::123456789012:user/x'\n", "targets[0].role_arn:"),
    (MINIMAL_TARGET + "role_arn = 'arn:aws:iam::123456789012:role/'\n", "targets[0].role_arn:"),
    (MINIMAL_TARGET.replace('"t"', '"_poison"'), "targets[0].name: '_poison': names starting with '_' are reserved"),
    (MINIMAL_TARGET.replace('"t"', '"_unmapped"'), "targets[0].name: '_unmapped': names starting with '_'"),
    (MINIMAL_TARGET.replace('"t"', '"_x"'), "targets[0].name: '_x': names starting with '_' are reserved"),
    (MINIMAL_TARGET + "ledger_table = 'a b'\n", "targets[0].ledger_table: 'a b' is not a valid DynamoDB table name"),
    (MINIMAL_TARGET + "ledger_table = 'ab'\n", "targets[0].ledger_table: 'ab' is not a valid DynamoDB table name"),
    ("[dead_letter]\nkind = 's3'\n" + MINIMAL_TARGET, "dead_letter.kind: must be one of dir, sqs"),
    ("[dead_letter]\nqueue = 'x'\n" + MINIMAL_TARGET, "dead_letter.queue: unknown key"),
    ("[dead_letter]\nkind = 'sqs'\n" + MINIMAL_TARGET, "targets[0].dead_letter.queue_url: required when kind"),
    ("[defaults.dead_letter]\npath = 1\n" + MINIMAL_TARGET, "defaults.dead_letter.path: must be str, got int"),
    ('[source]\ntable = "a b"\n' + MINIMAL_TARGET.replace('source_table = "src"\n', ""),
     "source.table: 'a b' is not a valid DynamoDB table name"),
    ('[source]\nregion = "Europe"\n' + MINIMAL_TARGET, "source.region: 'Europe' is not an AWS region name"),
    ('[source.key_schema]\nsrc = ["pk:X"]\n' + MINIMAL_TARGET, "source.key_schema.src: 'pk:X' must be"),
    ('[source.key_schema]\nsrc = ["a:S", "b:N", "c:B"]\n' + MINIMAL_TARGET, "source.key_schema.src: a key schema"),
    ('[source.key_schema]\nsrc = "pk:S"\n' + MINIMAL_TARGET, "source.key_schema.src: must be a list"),
    ("[source]\nmax_clock_skew_seconds = -1\n" + MINIMAL_TARGET, "source.max_clock_skew_seconds: must be between"),
    ("[source]\nearliest_change_seconds = 1e12\n" + MINIMAL_TARGET, "source.earliest_change_seconds: must be"),
    ("log_values = 'yes'\n" + MINIMAL_TARGET, "log_values: must be bool, got str"),
]


@pytest.mark.parametrize(("text", "message"), GAPS)
def test_each_gap_names_the_file_and_the_key(tmp_path, text, message) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_a_non_utf8_file_is_a_config_error_naming_the_file(tmp_path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(MINIMAL_TARGET.replace('"dst"', '"d\xe9st"').encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: not UTF-8")


def test_a_transform_that_fails_at_import_names_the_file_and_the_key(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken_transform_mod.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "syntax_transform_mod.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module, kind in (("broken_transform_mod", "RuntimeError"), ("syntax_transform_mod", "SyntaxError")):
        path = write(tmp_path, MINIMAL_TARGET + f"transform = '{module}:f'\n")
        with pytest.raises(ConfigError) as caught:
            load(path)
        assert str(caught.value).startswith(f"{path}: targets[0].transform: module {module!r} fails to import: {kind}")


def test_source_settings_become_the_record_checks(tmp_path) -> None:
    text = ('[source]\nregion = "us-east-1"\nmax_clock_skew_seconds = 60\nearliest_change_seconds = 1500000000\n'
            '[source.key_schema]\nsrc = ["pk:S", "sk:N"]\n' + MINIMAL_TARGET)
    checks = load(write(tmp_path, text)).record_checks()
    assert checks.region == "us-east-1" and checks.max_skew_micros == 60_000_000
    assert checks.floor_micros == 1_500_000_000_000_000
    assert checks.key_schemas["src"].partition == ("pk", "S") and checks.key_schemas["src"].sort == ("sk", "N")
    defaults = load(write(tmp_path, MINIMAL_TARGET)).record_checks()
    assert defaults.key_schemas == {} and defaults.region is None and defaults.max_skew_micros == 300_000_000
