"""Rendering of KCL properties (kcl_app.daemon) and the `tablesync run` command-line mapping."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from kcl_app import daemon
from kcl_app.commands import run as run_cmd

REPO = Path(__file__).resolve().parents[2]
PROPERTIES = REPO / "properties"
MINIMAL = """
executableName = /usr/bin/python3 /opt/app/worker.py
applicationName = app
streamName = stream
AWSCredentialsProvider = DefaultCredentialsProvider
"""


def render(template: str = MINIMAL, **overrides: str | None) -> dict[str, str]:
    return daemon.parse_properties(daemon.render_properties(template, {}, overrides))


def test_local_template_renders_absolute_executable_and_endpoints(tmp_path: Path) -> None:
    text = (PROPERTIES / "local.properties").read_text()
    rendered = daemon.render_properties(
        text, {"python": "/venv/bin/python", "config": "/etc/t.toml", "endpoint": "http://127.0.0.1:4599"})
    props = daemon.parse_properties(rendered)
    assert props["executableName"].split(" ") == [
        "/venv/bin/python", "-m", "kcl_app.worker", "--config", "/etc/t.toml"]
    assert props["kinesisEndpoint"] == props["dynamoDBEndpoint"] == "http://127.0.0.1:4599"
    assert props["cloudWatchClient.endpointOverride"] == "http://127.0.0.1:4599"
    assert props["retrievalMode"] == "POLLING"
    assert props["metricsLevel"] == "NONE"
    assert daemon.needs_json_protocol(rendered)


@pytest.mark.parametrize("name", ["production.properties", "production-fanout.properties"])
def test_production_templates_use_only_known_keys(name: str) -> None:
    text = (PROPERTIES / name).read_text()
    rendered = daemon.render_properties(text, {"python": "/venv/bin/python", "config": "/etc/t.toml",
                                               "stream": "s", "app": "a", "region": "eu-west-1"})
    props = daemon.parse_properties(rendered)
    assert props["regionName"] == "eu-west-1"
    assert "kinesisEndpoint" not in props
    assert not daemon.needs_json_protocol(rendered)
    grace, failover = int(props["shutdownGraceMillis"]), int(props["failoverTimeMillis"])
    assert grace > failover + 2000, "a graceful stop waits for the leases to lapse"


def test_fanout_template_differs_from_polling_only_in_retrieval() -> None:
    polling = daemon.parse_properties((PROPERTIES / "production.properties").read_text())
    fanout = daemon.parse_properties((PROPERTIES / "production-fanout.properties").read_text())
    assert polling["retrievalMode"] == "POLLING" and fanout["retrievalMode"] == "FANOUT"
    assert set(polling) - set(fanout) == {"idleTimeBetweenReadsInMillis", "maxRecords",
                                          "millisBehindLatestThresholdForReducedTps"}
    assert set(fanout) <= set(polling)
    same = set(fanout) - {"retrievalMode"}
    assert {k: polling[k] for k in same} == {k: fanout[k] for k in same}


def test_unknown_key_is_refused_with_a_hint() -> None:
    with pytest.raises(daemon.PropertiesError) as err:
        render(MINIMAL + "failOverTimeMillis = 3000\n")
    assert err.value.key == "failOverTimeMillis"
    assert "did you mean 'failoverTimeMillis'" in str(err.value)


def test_unknown_key_in_overrides_is_refused() -> None:
    with pytest.raises(daemon.PropertiesError, match="idleTimeBetweenReadsMillis"):
        render(idleTimeBetweenReadsMillis="200")


def test_credentials_provider_keys_are_case_insensitive_in_prefix_only() -> None:
    assert render(MINIMAL.replace("AWSCredentialsProvider", "awsCredentialsProvider"))
    assert render(AWSCredentialsProviderDynamoDB="DefaultCredentialsProvider")
    with pytest.raises(daemon.PropertiesError):
        render(AWSCredentialsProviderDynamodb="DefaultCredentialsProvider")


def test_unknown_placeholder_is_refused() -> None:
    with pytest.raises(daemon.PropertiesError, match=r"\{stream\}"):
        daemon.render_properties(MINIMAL.replace("streamName = stream", "streamName = {stream}"), {})


@pytest.mark.parametrize("executable", [
    "python3 worker.py",                      # relative program
    "/usr/bin/python3 app/worker.py",         # relative script
    "/usr/bin/python3\t/opt/worker.py",       # tab: not a separator for the daemon
    "/usr/bin/python3 '/opt/my worker.py'",   # quoting is not understood
    "/usr/bin/python3 /opt/w.py | tee x",     # no shell
])
def test_bad_executable_is_refused(executable: str) -> None:
    with pytest.raises(daemon.PropertiesError) as err:
        render(executableName=executable)
    assert err.value.key == "executableName"


def test_executable_whitespace_is_normalised() -> None:
    props = render(executableName="/usr/bin/python3   -m  kcl_app.worker --config /etc/t.toml ")
    assert props["executableName"] == "/usr/bin/python3 -m kcl_app.worker --config /etc/t.toml"


def test_required_keys_and_stream() -> None:
    with pytest.raises(daemon.PropertiesError) as err:
        render(applicationName=None)
    assert err.value.key == "applicationName"
    with pytest.raises(daemon.PropertiesError, match="streamName or streamArn"):
        render(streamName=None)
    assert render(streamName=None, streamArn="arn:aws:kinesis:us-east-1:1:stream/s")["streamArn"]


def test_both_initial_position_keys_are_refused() -> None:
    with pytest.raises(daemon.PropertiesError, match="not both"):
        render(initialPositionInStream="LATEST", initialPositionInStreamExtended="1700000000")


def test_parser_refuses_what_it_cannot_read_faithfully() -> None:
    for text in ("a = 1 \\\n  2\n", "just-a-word\n", "a = 1\na = 2\n"):
        with pytest.raises(daemon.PropertiesError):
            daemon.parse_properties(text)
    assert daemon.parse_properties("# c\n! c\nk: v\nx=y = z\n") == {"k": "v", "x": "y = z"}


def test_values_are_escaped_for_java_properties() -> None:
    rendered = daemon.render_properties(MINIMAL, {}, {"processingLanguage": "C:\\py"})
    assert "processingLanguage = C:\\\\py" in rendered


def test_java_command_line(tmp_path: Path) -> None:
    props = tmp_path / "kcl.properties"
    argv = daemon.java_command(props, java="/usr/bin/java", cbor=False)
    assert argv[0] == "/usr/bin/java"
    assert "-Daws.cborEnabled=false" in argv
    classpath = Path(argv[argv.index("-cp") + 1])
    assert classpath.name == "*"
    assert list(classpath.parent.glob("amazon-kinesis-client-multilang-3.1.3.jar"))
    assert argv[-3:] == [daemon.MAIN_CLASS, "--properties-file", str(props)]
    assert "-Daws.cborEnabled=false" not in daemon.java_command(props, java="/usr/bin/java", cbor=True)


# ----------------------------------------------------------------------------- tablesync run


def _args(tmp_path: Path, properties: Path, **extra: object) -> argparse.Namespace:
    config = tmp_path / "targets.toml"
    config.write_text("")
    values = {"properties": properties, "config": config, "stream": None, "app": None, "region": None,
              "endpoint": None, "initial_position": None, "log_file": None}
    values.update(extra)
    return argparse.Namespace(**values)


def test_run_maps_flags_to_properties(tmp_path: Path) -> None:
    args = _args(tmp_path, PROPERTIES / "production.properties", stream="orders", app="orders-sync",
                 region="eu-west-1", initial_position="AT_TIMESTAMP:2024-01-02T03:04:05Z")
    props = daemon.parse_properties(run_cmd.build_properties(args, {}))
    assert props["streamName"] == "orders" and props["applicationName"] == "orders-sync"
    assert props["initialPositionInStreamExtended"] == "1704164645"
    assert "initialPositionInStream" not in props
    assert props["executableName"].split(" ")[0] == sys.executable
    assert props["executableName"].endswith(f"--config {(tmp_path / 'targets.toml').resolve()}")


def test_run_endpoint_points_every_client_at_the_emulator(tmp_path: Path) -> None:
    args = _args(tmp_path, PROPERTIES / "local.properties", endpoint="http://127.0.0.1:4510",
                 initial_position="latest")
    props = daemon.parse_properties(run_cmd.build_properties(args, {}))
    assert {props[k] for k in ("kinesisEndpoint", "dynamoDBEndpoint", "cloudWatchClient.endpointOverride")} == {
        "http://127.0.0.1:4510"}
    assert props["initialPositionInStream"] == "LATEST"
    env = run_cmd.daemon_environment(args, {"PATH": "/bin"})
    assert env["AWS_ACCESS_KEY_ID"] == "testing" and env["PATH"] == "/bin"
    # the record processors inherit it: targets without an endpoint_url are written to the emulator
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:4510"
    assert "AWS_ENDPOINT_URL" not in run_cmd.daemon_environment(_args(tmp_path, PROPERTIES / "local.properties"), {})


def test_run_without_config_leaves_the_processors_to_the_environment(tmp_path: Path) -> None:
    args = _args(tmp_path, PROPERTIES / "production.properties", config=None, stream="s", app="a",
                 region="eu-west-1")
    props = daemon.parse_properties(run_cmd.build_properties(args, {}))
    assert props["executableName"] == f"{sys.executable} -m kcl_app.worker"
    config = tmp_path / "env.toml"
    config.write_text("")
    via_env = daemon.parse_properties(run_cmd.build_properties(args, {"TABLESYNC_CONFIG": str(config)}))
    assert via_env["executableName"].endswith(f"--config {config.resolve()}")


def test_run_names_the_missing_flag(tmp_path: Path) -> None:
    args = _args(tmp_path, PROPERTIES / "production.properties", app="a", region="eu-west-1")
    with pytest.raises(run_cmd.UsageError, match="give --stream"):
        run_cmd.build_properties(args, {})
    args = _args(tmp_path, PROPERTIES / "local.properties")
    with pytest.raises(run_cmd.UsageError, match="give --endpoint"):
        run_cmd.build_properties(args, {})


def test_run_region_from_environment(tmp_path: Path) -> None:
    args = _args(tmp_path, PROPERTIES / "production.properties", stream="s", app="a")
    props = daemon.parse_properties(run_cmd.build_properties(args, {"AWS_DEFAULT_REGION": "ap-south-1"}))
    assert props["regionName"] == "ap-south-1"


@pytest.mark.parametrize("value", ["AT_TIMESTAMP:yesterday", "AT_TIMESTAMP:2024-01-02T03:04:05", "EARLIEST"])
def test_run_refuses_bad_initial_position(value: str) -> None:
    with pytest.raises(run_cmd.UsageError):
        run_cmd.initial_position_overrides(value)


def test_run_refuses_a_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(tmp_path, PROPERTIES / "local.properties", endpoint="http://127.0.0.1:1")
    args.config = tmp_path / "missing.toml"
    assert run_cmd.run(args) == 2
    assert "missing.toml" in capsys.readouterr().err


def test_run_reports_a_daemon_that_cannot_start(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []  # the pre-flight checks pass (tests/integration/test_check.py covers them)
    monkeypatch.setattr(run_cmd, "preflight_refuses_start", lambda a, props, env: checked.append(a.endpoint))
    args = _args(tmp_path, PROPERTIES / "local.properties", endpoint="http://127.0.0.1:1",
                 log_file=tmp_path / "no-such-dir" / "daemon.log")
    assert run_cmd.run(args) == 1
    assert checked == ["http://127.0.0.1:1"]
    assert "cannot start the KCL daemon" in capsys.readouterr().err


INJECTIONS = ["x\nkinesisEndpoint = http://attacker.example", "x\rkinesisEndpoint = h", "x\r\n", "x\x0bq", "x\x0cq",
              "x\x00", "x\x1b[2J", "x\x85y", "x\u2028kinesisEndpoint = h", "x\u2029y", "x\ty"]


@pytest.mark.parametrize("flag", ["stream", "app", "region", "endpoint"])
@pytest.mark.parametrize("value", INJECTIONS)
def test_run_refuses_a_control_character_in_every_substituted_value(tmp_path: Path, flag: str, value: str) -> None:
    good = {"stream": "s", "app": "a", "region": "eu-west-1"}
    template = PROPERTIES / ("local.properties" if flag == "endpoint" else "production.properties")
    args = _args(tmp_path, template, **{**good, flag: value})
    with pytest.raises(run_cmd.UsageError, match="control character U\\+") as caught:
        run_cmd.build_properties(args, {})
    assert "refused" in str(caught.value)


@pytest.mark.parametrize("value", INJECTIONS[:3])
def test_run_refuses_a_control_character_in_the_region_from_the_environment(tmp_path: Path, value: str) -> None:
    args = _args(tmp_path, PROPERTIES / "production.properties", stream="s", app="a")
    with pytest.raises(run_cmd.UsageError, match="control character"):
        run_cmd.build_properties(args, {"AWS_REGION": value})


def test_run_refuses_a_config_path_with_a_line_break(tmp_path: Path) -> None:
    folder = tmp_path / "a\nkinesisEndpoint=http:"
    folder.mkdir()
    args = _args(folder, PROPERTIES / "production.properties", stream="s", app="a", region="eu-west-1")
    with pytest.raises(run_cmd.UsageError, match="control character U\\+000A"):
        run_cmd.build_properties(args, {})


@pytest.mark.parametrize("value", INJECTIONS)
def test_render_refuses_a_control_character_in_substitutions_and_overrides(value: str) -> None:
    with pytest.raises(daemon.PropertiesError, match="control character"):
        daemon.render_properties(MINIMAL, {"anything": value})
    with pytest.raises(daemon.PropertiesError, match="control character") as caught:
        daemon.render_properties(MINIMAL, {}, {"applicationName": value})
    assert caught.value.key == "applicationName"


def test_a_clean_value_still_renders_and_adds_no_key() -> None:
    props = render(applicationName="orders-sync.v2_x")
    assert props["applicationName"] == "orders-sync.v2_x" and "kinesisEndpoint" not in props


@pytest.mark.parametrize(("key", "value"), [
    ("dampeningPercentage", "0"),          # KCL takes 0 for "unset": the default 60 would apply
    ("reBalanceThresholdPercentage", "150"),
    ("varianceBalancingFrequency", "0"),
    ("idleTimeBetweenReadsInMillis", "100"),  # KCL raises it to 200 with a warning
    ("maxRecords", "20000"),
    ("leaseAssignmentIntervalMillis", "5s"),
    ("allowThroughputOvershoot", "no"),
])
def test_lease_and_poll_values_the_daemon_would_not_apply_are_refused(key: str, value: str) -> None:
    with pytest.raises(daemon.PropertiesError) as err:
        render(**{key: value})
    assert err.value.key == key and key in str(err.value)


@pytest.mark.parametrize("name", ["local.properties", "production.properties", "production-fanout.properties"])
def test_a_balanced_fleet_keeps_its_leases(name: str) -> None:
    """Lease balancing settings that stop steady-state hand-offs (docs/operating-notes.md)."""
    props = daemon.parse_properties((PROPERTIES / name).read_text())
    assert props["allowThroughputOvershoot"] == "false"
    rounds = int(props["varianceBalancingFrequency"])
    assert rounds * int(props["leaseAssignmentIntervalMillis"]) >= 15_000, "rebalancing at most every 15 s"


def test_the_daemon_has_the_sso_jars_at_its_sdk_version() -> None:
    """IAM Identity Center profiles need the SDK's sso and ssooidc clients on the daemon's classpath
    (scripts/setup.sh adds them to kclpy's Maven dependencies at its ${awssdk.version})."""
    jars = {p.name for p in daemon.jars_dir().glob("*.jar")}
    core = sorted(j for j in jars if j.startswith("sdk-core-"))
    assert core, "no AWS SDK core jar"
    version = core[0][len("sdk-core-"):-len(".jar")]
    assert {f"sso-{version}.jar", f"ssooidc-{version}.jar"} <= jars, sorted(j for j in jars if "sso" in j)
