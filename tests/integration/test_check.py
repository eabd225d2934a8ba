"""`tablesync check`, one test per finding, run as a user would: the command in a subprocess against
the real local stack (the emulator process, its Kinesis streaming destination included); and the
same checks refusing `run`, `backfill` and `verify` before they start anything."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tablesync_local.stack import LocalStack, poll_until, start_subprocess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
TARGET_REGION = "eu-west-1"


def cli(stack_endpoint: str, *argv: str, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TABLESYNC_"))}
    environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION,
                    "PYTHONPATH": str(ROOT)})
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "kcl_app.cli", *argv], capture_output=True, text=True,
                          env=environ, timeout=timeout, cwd=ROOT)


class World:
    """A source table with its stream and destination, and targets, under unique names."""

    def __init__(self, stack: LocalStack, tmp: Path) -> None:
        self.stack = stack
        self.tmp = tmp
        self.suffix = uuid.uuid4().hex[:8]
        self.source = f"src-{self.suffix}"
        self.stream = f"stream-{self.suffix}"
        self.ddb = stack.client("dynamodb", REGION)
        self.kinesis = stack.client("kinesis", REGION)
        self.target_ddb = stack.client("dynamodb", TARGET_REGION)

    def table(self, client: Any, name: str, key: str = "pk", key_type: str = "S") -> None:
        client.create_table(TableName=name, KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": key, "AttributeType": key_type}],
                            BillingMode="PAY_PER_REQUEST")

    def source_with_destination(self, precision: str | None = "MICROSECOND") -> None:
        self.table(self.ddb, self.source)
        self.kinesis.create_stream(StreamName=self.stream, ShardCount=1)
        arn = self.kinesis.describe_stream_summary(StreamName=self.stream)["StreamDescriptionSummary"]["StreamARN"]
        if precision:
            self.ddb.enable_kinesis_streaming_destination(
                TableName=self.source, StreamArn=arn,
                EnableKinesisStreamingConfiguration={"ApproximateCreationDateTimePrecision": precision})

    def config(self, targets: list[str] | None = None, extra: str = "", **target_extra: str) -> Path:
        targets = [f"dst-{self.suffix}"] if targets is None else targets
        lines = [extra, "[source]", f'table = "{self.source}"', f'region = "{REGION}"',
                 f'endpoint_url = "{self.stack.endpoint}"']
        for i, table in enumerate(targets):
            lines += ["[[targets]]", f'name = "t{i}"', f'region = "{TARGET_REGION}"', f'table = "{table}"',
                      f'endpoint_url = "{self.stack.endpoint}"']
            lines += [f"{k} = {v}" for k, v in target_extra.items()]
            lines += ["[targets.dead_letter]", f'path = "{self.tmp / "dl"}"']
        path = self.tmp / f"targets-{uuid.uuid4().hex[:6]}.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def check(self, config: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        result = cli(self.stack.endpoint, "check", "--config", str(config), "--json", *extra, env=env)
        assert result.stdout, result.stderr
        return result.returncode, json.loads(result.stdout)


def finding(doc: dict[str, Any], prefix: str) -> dict[str, Any]:
    found = [c for c in doc["checks"] if c["check"].startswith(prefix)]
    assert found, f"no {prefix!r} check in {[c['check'] for c in doc['checks']]}"
    return found[0]


@pytest.fixture
def world(local_stack: LocalStack, tmp_path: Path) -> World:
    return World(local_stack, tmp_path)


@pytest.fixture
def ready(world: World) -> World:
    """A source with its stream and MICROSECOND destination, and one target with the same key."""
    world.source_with_destination()
    world.table(world.target_ddb, f"dst-{world.suffix}")
    return world


def test_everything_in_order_is_ok_and_the_table_has_one_line_per_check(ready: World) -> None:
    config = ready.config()
    result = cli(ready.stack.endpoint, "check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for check in ("config", f"source {ready.source}", f"destination {ready.source}", f"stream {ready.stream}",
                  "target t0", "ledger t0", "writable t0"):
        assert any(line.startswith("OK") and check in line for line in lines), (check, result.stdout)
    assert lines[-1].startswith("OK: 7 ok, 0 warning(s), 0 failure(s)")
    # the probe wrote nothing: no item in the target, no change record in the source's stream
    assert ready.target_ddb.scan(TableName=f"dst-{ready.suffix}")["Count"] == 0
    code, doc = ready.check(config)
    assert code == 0 and doc["status"] == "OK" and all(c["status"] == "OK" for c in doc["checks"])


def test_invalid_config_fails(ready: World) -> None:
    config = ready.config(extra='precision = "NANOSECOND"')
    code, doc = ready.check(config)
    assert code == 2
    bad = finding(doc, "config")
    assert bad["status"] == "FAIL" and "precision" in bad["detail"] and len(doc["checks"]) == 1


def test_mistyped_stream_fails(ready: World) -> None:
    code, doc = ready.check(ready.config(), "--stream", f"{ready.stream}-typo")
    assert code == 2
    stream = finding(doc, "stream ")
    assert stream["status"] == "FAIL" and "no Kinesis stream" in stream["detail"] and ready.stream in stream["detail"]
    assert "not into" in finding(doc, "destination")["detail"]


def test_missing_source_table_fails(world: World) -> None:
    world.table(world.target_ddb, f"dst-{world.suffix}")
    code, doc = world.check(world.config())
    assert code == 2
    assert finding(doc, "source")["status"] == "FAIL" and "does not exist" in finding(doc, "source")["detail"]


def test_source_without_destination_fails(world: World) -> None:
    world.source_with_destination(precision=None)
    world.table(world.target_ddb, f"dst-{world.suffix}")
    code, doc = world.check(world.config())
    assert code == 2
    dest = finding(doc, "destination")
    assert dest["status"] == "FAIL" and "enable-kinesis-streaming-destination" in dest["fix"]


def test_millisecond_destination_warns(world: World) -> None:
    world.source_with_destination(precision="MILLISECOND")
    world.table(world.target_ddb, f"dst-{world.suffix}")
    code, doc = world.check(world.config())
    assert code == 1 and doc["status"] == "WARN"
    dest = finding(doc, "destination")
    assert dest["status"] == "WARN" and "MICROSECOND" in dest["fix"]


def test_precision_in_config_contradicting_the_destination_fails(ready: World) -> None:
    code, doc = ready.check(ready.config(extra='precision = "MILLISECOND"'))
    assert code == 2
    assert finding(doc, "destination")["status"] == "FAIL" and "wrong unit" in finding(doc, "destination")["detail"]


def test_missing_target_fails(ready: World) -> None:
    code, doc = ready.check(ready.config(targets=[f"dst-{ready.suffix}", f"nope-{ready.suffix}"]))
    assert code == 2
    assert finding(doc, "target t0")["status"] == "OK"
    missing = finding(doc, "target t1")
    assert missing["status"] == "FAIL" and "does not exist" in missing["detail"] and "pk (HASH S)" in missing["fix"]


def test_target_with_another_key_schema_fails(ready: World) -> None:
    other = f"other-key-{ready.suffix}"
    ready.table(ready.target_ddb, other, key="id", key_type="N")
    code, doc = ready.check(ready.config(targets=[other]))
    assert code == 2
    bad = finding(doc, "target t0")
    assert bad["status"] == "FAIL" and "id (HASH N)" in bad["detail"] and "pk (HASH S)" in bad["detail"]


def test_recreated_target_is_found_explained_and_backfill_refused_until_reset(ready: World) -> None:
    target = f"dst-{ready.suffix}"
    ready.ddb.put_item(TableName=ready.source, Item={"pk": {"S": "a"}, "v": {"N": "1"}})
    ready.ddb.put_item(TableName=ready.source, Item={"pk": {"S": "b"}, "v": {"N": "2"}})
    config = ready.config()
    backfill = ("backfill", "--config", str(config), "--source-table", ready.source, "--skip-stream-check",
                "--state-dir", str(ready.tmp / "state"))
    first = cli(ready.stack.endpoint, *backfill)
    assert first.returncode == 0, first.stderr
    assert ready.check(config)[0] == 0
    # the target is deleted and re-created empty; its ledger survives
    ready.target_ddb.delete_table(TableName=target)
    ready.table(ready.target_ddb, target)
    code, doc = ready.check(config)
    assert code == 2
    ledger = finding(doc, "ledger t0")
    assert ledger["status"] == "FAIL" and "re-created" in ledger["detail"] and "empty" in ledger["detail"]
    assert "--reset-ledger" in ledger["fix"]
    refused = cli(ready.stack.endpoint, *backfill, "--restart")
    assert refused.returncode == 2 and "--reset-ledger" in refused.stderr and "refused" in refused.stderr
    assert ready.target_ddb.scan(TableName=target)["Count"] == 0
    reset = cli(ready.stack.endpoint, *backfill, "--restart", "--reset-ledger", "--target", "t0")
    assert reset.returncode == 0, reset.stderr
    assert "2 rows forgotten" in reset.stderr
    assert json.loads(reset.stdout)["written"] == {"t0": 2}
    assert ready.target_ddb.scan(TableName=target)["Count"] == 2
    assert ready.check(config)[0] == 0
    # a consistent ledger is never reset
    again = cli(ready.stack.endpoint, *backfill, "--reset-ledger", "--target", "t0")
    assert again.returncode == 2 and "ledger is kept" in again.stderr


@pytest.fixture(scope="module")
def enforced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack of its own that authorises every request (moto's IAM enforcement), with an admin."""
    import urllib.request

    stack = start_subprocess(log_path=tmp_path_factory.mktemp("check-iam") / "stack.log")
    try:
        iam = stack.client("iam")
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        stack.admin = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],  # type: ignore[attr-defined]
                       "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        request = urllib.request.Request(stack.endpoint + "/moto-api/reset-auth", data=b"0", method="POST",  # noqa: S310
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10):
            pass
        yield stack
    finally:
        stack.stop()


def test_target_not_writable_with_these_credentials_fails(enforced: LocalStack, tmp_path: Path) -> None:
    import boto3

    admin = enforced.admin  # type: ignore[attr-defined]

    def client(service: str, region: str = REGION) -> Any:
        return boto3.session.Session().client(service, region_name=region, endpoint_url=enforced.endpoint,
                                              aws_access_key_id=admin["AWS_ACCESS_KEY_ID"],
                                              aws_secret_access_key=admin["AWS_SECRET_ACCESS_KEY"])

    world = World(enforced, tmp_path)
    world.ddb, world.kinesis = client("dynamodb"), client("kinesis")
    world.target_ddb = client("dynamodb", TARGET_REGION)
    world.source_with_destination()
    world.table(world.target_ddb, f"dst-{world.suffix}")
    without_delete = ["dynamodb:DescribeTable", "dynamodb:DescribeKinesisStreamingDestination", "dynamodb:Scan",
                 "dynamodb:GetItem", "kinesis:DescribeStreamSummary", "kinesis:ListStreams", "dynamodb:PutItem"]
    iam = client("iam")
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": without_delete, "Resource": "*"}]}))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    reader = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    config = world.config()
    code, doc = world.check(config, env=admin)
    assert code == 0, doc
    code, doc = world.check(config, env=reader)
    assert code == 2
    assert finding(doc, "target t0")["status"] == "OK"
    denied = finding(doc, "writable t0")
    assert denied["status"] == "FAIL" and "dynamodb:DeleteItem" in denied["detail"], denied
    assert "credentials" in denied["fix"]


def test_run_with_a_mistyped_stream_starts_nothing_and_exits_2(ready: World) -> None:
    app = f"app-{ready.suffix}"
    started = time.monotonic()
    result = cli(ready.stack.endpoint, "run", "--properties", "properties/local.properties", "--config",
                 str(ready.config()), "--endpoint", ready.stack.endpoint, "--stream", f"{ready.stream}-typo",
                 "--app", app)
    assert result.returncode == 2, result.stderr
    assert "FAIL" in result.stderr and "no Kinesis stream" in result.stderr and "nothing was started" in result.stderr
    assert time.monotonic() - started < 60  # no daemon was waited for (a generous bound, not a benchmark)
    tables = ready.ddb.list_tables()["TableNames"]
    assert not [t for t in tables if t.startswith(app)], tables  # no lease table, no coordinator state


def test_run_refuses_a_bad_config_before_starting(ready: World) -> None:
    app = f"app-{ready.suffix}"
    config = ready.config(extra="unmaped = 'park'")
    result = cli(ready.stack.endpoint, "run", "--properties", "properties/local.properties", "--config",
                 str(config), "--endpoint", ready.stack.endpoint, "--stream", ready.stream, "--app", app)
    assert result.returncode == 2 and "unmaped" in result.stderr and "did you mean 'unmapped'" in result.stderr
    assert not [t for t in ready.ddb.list_tables()["TableNames"] if t.startswith(app)]


def test_run_accepts_the_environment_only_configuration(ready: World) -> None:
    """No --config: the TABLESYNC_* variables are the configuration (a missing target is then found)."""
    env = {"TABLESYNC_SOURCE_TABLE": ready.source, "TABLESYNC_TARGET_TABLE": f"missing-{ready.suffix}",
           "TABLESYNC_TARGET_REGION": TARGET_REGION}
    result = cli(ready.stack.endpoint, "run", "--properties", "properties/local.properties", "--endpoint",
                 ready.stack.endpoint, "--stream", ready.stream, "--app", f"app-{ready.suffix}", env=env)
    assert result.returncode == 2, result.stderr
    assert f"target table 'missing-{ready.suffix}' in {TARGET_REGION} does not exist" in result.stderr
    env["TABLESYNC_TARGET_TABLE"] = f"dst-{ready.suffix}"
    checked = cli(ready.stack.endpoint, "check", "--endpoint", ready.stack.endpoint, "--json", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert finding(json.loads(checked.stdout), "config")["detail"].startswith("environment")


def test_verify_refuses_a_missing_target(ready: World) -> None:
    result = cli(ready.stack.endpoint, "verify", "--config", str(ready.config(targets=[f"gone-{ready.suffix}"])))
    assert result.returncode == 2
    assert "FAIL" in result.stderr and "does not exist" in result.stderr


def test_backfill_interrupted_says_what_was_done_and_resumes(ready: World) -> None:
    for i in range(300):
        ready.ddb.put_item(TableName=ready.source, Item={"pk": {"S": f"k{i:04d}"}, "v": {"N": str(i)}})
    config = ready.config()
    state = ready.tmp / "state"
    argv = [sys.executable, "-m", "kcl_app.cli", "backfill", "--config", str(config), "--source-table",
            ready.source, "--skip-stream-check", "--state-dir", str(state), "--segments", "1",
            "--page-size", "10", "--write-units", "40"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TABLESYNC_"))}
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION,
                "PYTHONPATH": str(ROOT)})
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        poll_until(lambda: any(state.glob("backfill-*.json")), timeout=60, message="a first page saved")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "rerun the same command to resume" in err and "--restart" in err
    assert "items scanned so far" in err
    resumed = cli(ready.stack.endpoint, *argv[3:-2])
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["resumed"] is True and report["scanned"] == 300
    assert ready.target_ddb.scan(TableName=f"dst-{ready.suffix}", Select="COUNT")["Count"] == 300
    restarted = cli(ready.stack.endpoint, *argv[3:-2], "--restart")
    doc = json.loads(restarted.stdout)
    assert restarted.returncode == 0 and doc["resumed"] is False and doc["scanned"] == 300
    assert doc["skipped"] == {"t0": 300}  # every key already seen: a restart re-scans, writes nothing twice


@pytest.mark.skipif(shutil.which("aws") is None, reason="the walk-through uses the aws CLI")
def test_the_readme_walk_through_sets_up_what_check_passes(local_stack: LocalStack, tmp_path: Path) -> None:
    """The README's by-hand walk-through, run as written (names made unique, the stack is this session's)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### By hand on the local stack", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert block.splitlines()[0].startswith('eval "$(.venv/bin/tablesync local up)"')
    suffix = uuid.uuid4().hex[:6]
    script = "\n".join(block.splitlines()[1:]).replace("orders", f"orders{suffix}")
    script = script.replace(".venv/bin/", f"{ROOT}/.venv/bin/")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TABLESYNC_"))}
    env.update(local_stack.env(REGION), PYTHONPATH=str(ROOT))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("OK: 7 ok"), done.stdout


def test_stream_retaining_longer_than_configured_fails_with_the_value_to_set(ready: World) -> None:
    ready.kinesis.increase_stream_retention_period(StreamName=ready.stream, RetentionPeriodHours=72)
    code, doc = ready.check(ready.config())  # exact mode: stream_retention_hours defaults to 24
    assert code == 2
    stream = finding(doc, "stream ")
    assert stream["status"] == "FAIL" and "72 h" in stream["detail"] and "TRIM_HORIZON" in stream["detail"]
    assert "stream_retention_hours = 72" in stream["fix"]
    code, doc = ready.check(ready.config(extra="stream_retention_hours = 72"))
    assert code == 0, doc
    code, doc = ready.check(ready.config(extra="stream_retention_hours = 96"))  # longer is only safer
    assert code == 0 and "retention 72 h" in finding(doc, "stream ")["detail"]


INLINE = {"mode": '"inline"'}
RETENTION = "stream_retention_hours = 24"


def test_inline_tombstone_table_missing_fails_unless_it_will_be_created(ready: World) -> None:
    code, doc = ready.check(ready.config(extra=RETENTION, create_ledger="false", **INLINE))
    assert code == 2
    tomb = finding(doc, "tombstones t0")
    assert tomb["status"] == "FAIL" and f"dst-{ready.suffix}.tablesync-tombstones" in tomb["detail"]
    assert "create_ledger = true" in tomb["fix"]
    code, doc = ready.check(ready.config(extra=RETENTION, **INLINE))
    assert code == 0, doc
    assert "created on first use" in finding(doc, "tombstones t0")["detail"]
    assert f"dst-{ready.suffix}.tablesync-tombstones" not in ready.target_ddb.list_tables()["TableNames"]


def test_inline_tombstone_table_with_another_key_fails(ready: World) -> None:
    ready.table(ready.target_ddb, f"dst-{ready.suffix}.tablesync-tombstones", key="pk")
    code, doc = ready.check(ready.config(extra=RETENTION, **INLINE))
    assert code == 2
    tomb = finding(doc, "tombstones t0")
    assert tomb["status"] == "FAIL" and "pk (HASH S)" in tomb["detail"] and "k (HASH S)" in tomb["detail"]


def test_inline_tombstone_table_is_in_the_write_probe_and_nothing_is_written(ready: World) -> None:
    tombstones = f"dst-{ready.suffix}.tablesync-tombstones"
    ready.table(ready.target_ddb, tombstones, key="k")
    code, doc = ready.check(ready.config(extra=RETENTION, **INLINE))
    assert code == 0, doc
    assert finding(doc, "tombstones t0")["status"] == "OK"
    probe = finding(doc, "writable t0")["detail"]
    assert "ConditionCheck on the tombstones" in probe and "Put on the tombstones" in probe
    assert ready.target_ddb.scan(TableName=tombstones)["Count"] == 0
    assert ready.target_ddb.scan(TableName=f"dst-{ready.suffix}")["Count"] == 0


def test_seed_into_an_existing_target_runs_the_checks_first(ready: World) -> None:
    other = f"other-key-{ready.suffix}"
    ready.table(ready.target_ddb, other, key="id", key_type="N")
    bucket = f"seed-{ready.suffix}"
    argv = ("seed", "--config", str(ready.config(targets=[other])), "--target", "t0", "--bucket", bucket,
            "--skip-stream-check", "--poll", "0.1")
    result = cli(ready.stack.endpoint, *argv)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "FAIL" in result.stderr and "id (HASH N)" in result.stderr and "refused by the pre-flight" in result.stderr
    assert not result.stdout  # no summary: nothing was exported or written
    assert ready.target_ddb.scan(TableName=other)["Count"] == 0
    ledgers = [t for t in ready.target_ddb.list_tables()["TableNames"] if t.startswith(other + ".")]
    assert not ledgers, ledgers  # the checks ran before anything was prepared


def test_inline_target_without_condition_check_permission_fails_the_probe(enforced: LocalStack,
                                                                          tmp_path: Path) -> None:
    """PutItem and DeleteItem alone pass the old probe; an inline create also needs ConditionCheckItem
    on the tombstone table, and the probe now finds it missing."""
    import boto3

    admin = enforced.admin  # type: ignore[attr-defined]

    def client(service: str, region: str = REGION) -> Any:
        return boto3.session.Session().client(service, region_name=region, endpoint_url=enforced.endpoint,
                                              aws_access_key_id=admin["AWS_ACCESS_KEY_ID"],
                                              aws_secret_access_key=admin["AWS_SECRET_ACCESS_KEY"])

    world = World(enforced, tmp_path)
    world.ddb, world.kinesis = client("dynamodb"), client("kinesis")
    world.target_ddb = client("dynamodb", TARGET_REGION)
    world.source_with_destination()
    world.table(world.target_ddb, f"dst-{world.suffix}")
    world.table(world.target_ddb, f"dst-{world.suffix}.tablesync-tombstones", key="k")
    granted = ["dynamodb:DescribeTable", "dynamodb:DescribeKinesisStreamingDestination", "dynamodb:Scan",
               "dynamodb:GetItem", "kinesis:DescribeStreamSummary", "kinesis:ListStreams", "dynamodb:PutItem",
               "dynamodb:DeleteItem"]
    iam = client("iam")
    name = f"no-check-{world.suffix}"
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="write", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": granted, "Resource": "*"}]}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    user = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    config = world.config(extra=RETENTION, **INLINE)
    code, doc = world.check(config, env=admin)
    assert code == 0, doc
    code, doc = world.check(config, env=user)
    assert code == 2
    assert finding(doc, "tombstones t0")["status"] == "OK"
    denied = finding(doc, "writable t0")
    assert denied["status"] == "FAIL" and "dynamodb:ConditionCheckItem" in denied["detail"], denied
