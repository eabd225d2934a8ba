"""The worker policy's action list, proven on the local stack with moto's IAM enforcement on.

moto checks actions only (resources are treated as ``*``, see FIELD-NOTES), so the worker user gets
``moto_enforcement_policy``: the actions of ``infra/worker.yaml``'s worker role on ``"*"``. What this
proves is that the ACTION LIST suffices for a real `tablesync run` (KCL daemon + record processors),
and that removing one required action makes the same run fail with AccessDeniedException.

The stack is this module's own (enforcement is process-wide in moto). Enforcement starts right after
an ``admin`` IAM user exists: moto 5.2.5 has no root/default credentials once enforcement is on (an
unknown access key is refused with InvalidClientTokenId), so every call of the test goes through that
user (``Allow * on *``). The ledger tables are created by the admin and the targets say
``create_ledger = false``: the template's default (``CreateLedgerTables=false``) grants no
CreateTable/UpdateTimeToLive on ledgers.
"""

from __future__ import annotations

import json
import random
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from kcl_app.adapters.ledger import ledger_schema
from tablesync_local.fleet import Fleet, create_source, create_table, differences, scan, wait_for
from tablesync_local.stack import LocalStack, start_subprocess
from tests.infra.policy import DEFAULT_WORKER_PARAMETERS, moto_enforcement_policy, worker_actions, worker_statements

pytestmark = pytest.mark.integration

REGION = "us-east-1"
TARGET_REGION = "eu-west-1"
ACCOUNT = "123456789012"
# Removed from the second worker's policy. With retrievalMode = POLLING the KCL reads the stream only
# through GetRecords, so a worker without it can lease shards but never receives a record.
REMOVED_ACTION = "kinesis:GetRecords"
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass(frozen=True)
class Keys:
    access_key_id: str
    secret_access_key: str

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}


@dataclass
class EnforcedStack:
    stack: LocalStack
    admin: Keys

    @property
    def endpoint(self) -> str:
        return self.stack.endpoint

    def client(self, service: str, region: str = REGION, keys: Keys | None = None) -> Any:
        keys = keys or self.admin
        return boto3.session.Session().client(
            service, region_name=region, endpoint_url=self.endpoint, aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_access_key, config=Config(retries={"max_attempts": 2}))

    def user(self, name: str, policy: dict[str, Any]) -> Keys:
        """An IAM user with ``policy`` inline and one access key (created as admin)."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Keys(key["AccessKeyId"], key["SecretAccessKey"])


def _enforce_from_now(endpoint: str) -> None:
    """moto's switch: after N (= 0) more requests every request is authenticated and authorised."""
    request = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0", method="POST",  # noqa: S310
                                     headers={"Content-Type": "text/plain"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"


@pytest.fixture(scope="module")
def enforced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnforcedStack]:
    stack = start_subprocess(log_path=tmp_path_factory.mktemp("iam-stack") / "stack.log")
    try:
        bootstrap = EnforcedStack(stack, Keys("testing", "testing"))
        admin = bootstrap.user("admin", ALLOW_ALL)
        _enforce_from_now(stack.endpoint)
        yield EnforcedStack(stack, admin)
    finally:
        stack.stop()


def _denied(call: Callable[[], Any]) -> str:
    """The error message of ``call``, which must fail with AccessDeniedException."""
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    assert error["Code"] == "AccessDeniedException", error
    return str(error["Message"])


def test_actions_are_named_as_aws_authorises_them(enforced: EnforcedStack) -> None:
    """AWS has no IAM action dynamodb:TransactWriteItems: a transaction needs each item's action.
    CloudWatch calls are cloudwatch:* (moto derived "monitoring:*" from the signing name)."""
    table = f"tx-{uuid.uuid4().hex[:6]}"
    create_table(enforced.client("dynamodb"), table)
    keys = enforced.user(f"writer-{table}", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["dynamodb:PutItem", "dynamodb:DeleteItem", "cloudwatch:PutMetricData"],
         "Resource": "*"}]})
    ddb = enforced.client("dynamodb", keys=keys)
    ddb.transact_write_items(TransactItems=[
        {"Put": {"TableName": table, "Item": {"pk": {"S": "a"}}}},
        {"Delete": {"TableName": table, "Key": {"pk": {"S": "b"}}}},
    ])
    assert list(scan(enforced.client("dynamodb"), table)) == ['{"pk":{"S":"a"}}']
    message = _denied(lambda: ddb.transact_write_items(TransactItems=[
        {"Put": {"TableName": table, "Item": {"pk": {"S": "c"}}}},
        {"ConditionCheck": {"TableName": table, "Key": {"pk": {"S": "a"}},
                            "ConditionExpression": "attribute_exists(pk)"}},
    ]))
    assert message.endswith("dynamodb:ConditionCheckItem"), message
    assert "dynamodb:GetItem" in _denied(lambda: ddb.transact_get_items(
        TransactItems=[{"Get": {"TableName": table, "Key": {"pk": {"S": "a"}}}}]))
    assert list(scan(enforced.client("dynamodb"), table)) == ['{"pk":{"S":"a"}}'], "the denied one wrote nothing"
    cloudwatch = enforced.client("cloudwatch", keys=keys)
    cloudwatch.put_metric_data(Namespace=table, MetricData=[{"MetricName": "Applied", "Value": 1.0}])
    with pytest.raises(ClientError, match="not authorized to perform: cloudwatch:ListMetrics"):
        cloudwatch.list_metrics(Namespace=table)
    listed = enforced.client("cloudwatch").list_metrics(Namespace=table)["Metrics"]
    assert [m["MetricName"] for m in listed] == ["Applied"]


# ----------------------------------------------------------------------------- the real worker, enforced


def _policy_parameters(app: str, stream_arn: str, targets: list[str]) -> dict[str, str]:
    arn = f"arn:aws:dynamodb:{TARGET_REGION}:{ACCOUNT}:table/"
    return {**DEFAULT_WORKER_PARAMETERS, "AppName": app, "StreamArn": stream_arn,
            "TargetTableArns": ",".join(arn + t for t in targets),
            "LedgerTableArns": ",".join(f"{arn}{t}.tablesync-{kind}" for t in targets
                                        for kind in ("ledger", "tombstones"))}


def _target(enforced: EnforcedStack, workdir: Path, source: str, table: str) -> Path:
    """Target + ledger created as admin; the targets file the worker reads."""
    ddb = enforced.client("dynamodb", TARGET_REGION)
    create_table(ddb, table)
    ddb.create_table(**ledger_schema(f"{table}.tablesync-ledger"))
    workdir.mkdir(parents=True)
    config = workdir / "targets.toml"
    config.write_text(
        f'[source]\ntable = "{source}"\n\n[[targets]]\nname = "copy"\nregion = "{TARGET_REGION}"\n'
        f'table = "{table}"\nendpoint_url = "{enforced.endpoint}"\ncreate_ledger = false\n'
        f'dead_letter = {{ kind = "dir", path = "{workdir / "dlq"}" }}\n', encoding="utf-8")
    return config


def _workload(ddb: Any, table: str, count: int = 60, keys: int = 15) -> None:
    """Puts, updates and deletes over a few keys (every kind is sure to occur)."""
    rng = random.Random(11)
    for n in range(count):
        key = {"pk": {"S": f"k{rng.randrange(keys):02d}"}}
        kind = n % 4 if n < 8 else rng.randrange(4)
        if kind == 0:
            ddb.delete_item(TableName=table, Key=key)
        elif kind == 1:
            ddb.update_item(TableName=table, Key=key, UpdateExpression="SET n = :n, s = :s",
                            ExpressionAttributeValues={":n": {"N": str(n)}, ":s": {"SS": ["u", str(n)]}})
        else:
            ddb.put_item(TableName=table, Item={**key, "n": {"N": str(n)}, "b": {"B": rng.randbytes(6)},
                                                "m": {"M": {"l": {"L": [{"NULL": True}, {"BOOL": True}]}}}})


@pytest.fixture
def fleets() -> Iterator[list[Fleet]]:
    started: list[Fleet] = []
    yield started
    with ThreadPoolExecutor(max(1, len(started))) as pool:  # graceful stops take seconds: in parallel
        list(pool.map(lambda fleet: fleet.stop(timeout=20), started))


@pytest.mark.daemon
def test_worker_policy_suffices_and_one_action_less_is_denied(
        enforced: EnforcedStack, fleets: list[Fleet], tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:6]
    source, stream = f"src-{suffix}", f"stream-{suffix}"
    app, app_minus = f"app-{suffix}", f"app-minus-{suffix}"
    target, target_minus = f"{source}-copy", f"{source}-minus"
    ddb = enforced.client("dynamodb")
    stream_arn = create_source(ddb, enforced.client("kinesis"), source, stream, 2)

    # 1 users: the worker's policy, and the same policy without one required action
    policy = moto_enforcement_policy(_policy_parameters(app, stream_arn, [target]))
    actions = policy["Statement"][0]["Action"]
    assert actions == worker_actions(_policy_parameters(app, stream_arn, [target]))
    assert REMOVED_ACTION in actions
    worker = enforced.user(f"worker-{suffix}", policy)
    minus_policy = moto_enforcement_policy(_policy_parameters(app_minus, stream_arn, [target_minus]))
    minus_policy["Statement"][0]["Action"] = [a for a in actions if a != REMOVED_ACTION]
    worker_minus = enforced.user(f"worker-minus-{suffix}", minus_policy)
    # enforcement is on for the worker's credentials: an action outside its policy is refused
    _denied(lambda: enforced.client("dynamodb", keys=worker).list_tables())

    # 2 both workers start on the same stream, each with its own application and fresh target
    for name, keys, application, table in (("worker", worker, app, target),
                                           ("worker-minus", worker_minus, app_minus, target_minus)):
        workdir = tmp_path / name
        config = _target(enforced, workdir, source, table)
        fleet = Fleet(enforced.endpoint, stream, application, config, workdir, extra_env=keys.env())
        fleets.append(fleet)
        fleet.start_worker(name)
    _workload(ddb, source)
    enforced.stack.flush()

    # 3 the worker with the policy replicates puts, updates and deletes exactly
    target_ddb = enforced.client("dynamodb", TARGET_REGION)
    expected = scan(ddb, source)
    assert expected, "the workload leaves items"

    def converged() -> bool:
        return not any(differences(expected, scan(target_ddb, target)).values())

    wait_for(converged, 120, 1.0, f"{target} to equal {source} (log: {fleets[0].workers[0].log_path})")

    # 4 the worker without the action is refused by name, and replicates nothing
    minus_log = fleets[1].workers[0].log_path

    def denial_logged() -> bool:
        text = minus_log.read_text(errors="replace") if minus_log.exists() else ""
        return "AccessDeniedException" in text and f"not authorized to perform: {REMOVED_ACTION}" in text

    wait_for(denial_logged, 60, 0.5, f"an AccessDeniedException for {REMOVED_ACTION} in {minus_log}")
    assert fleets[1].workers[0].alive(), "a denied read is retried, not fatal"
    assert scan(target_ddb, target_minus) == {}


# ----------------------------------------------------------------------------- the target writes, enforced

TARGET_REMOVED_ACTION = "dynamodb:DeleteItem"


def _writes_with(enforced: EnforcedStack, keys: Keys, tmp_path: Path, table: str, clock: Any,
                 monkeypatch: pytest.MonkeyPatch) -> tuple[Any, dict[str, Any]]:
    """Every kind of change (puts, overwrites, deletes) through the worker's pipeline into one exact
    and one inline target, with `keys` as the worker's credentials. Returns (engine, expected items)."""
    from kcl_app.adapters.metrics import RecordingMetrics
    from kcl_app.compose import build_engine
    from kcl_app.config import load
    from tests.support.source_sim import SourceSim

    ddb = enforced.client("dynamodb", TARGET_REGION)
    for name in (table, f"{table}-inline"):
        create_table(ddb, name)
    ddb.create_table(**ledger_schema(f"{table}.tablesync-ledger"))
    ddb.create_table(**ledger_schema(f"{table}-inline.tablesync-tombstones"))  # the ledger's schema
    tmp_path.mkdir(parents=True)
    config = tmp_path / "targets.toml"
    config.write_text("stream_retention_hours = 24\n\n" + "".join(
        f'[[targets]]\nname = "{name}"\nsource_table = "src"\nregion = "{TARGET_REGION}"\ntable = "{name}"\n'
        f'mode = "{mode}"\nendpoint_url = "{enforced.endpoint}"\ncreate_ledger = false\n'
        f'retry_budget_seconds = 1\ndead_letter = {{ kind = "dir", path = "{tmp_path / "dlq"}" }}\n\n'
        for name, mode in ((table, "exact"), (f"{table}-inline", "inline"))), encoding="utf-8")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys.secret_access_key)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    sim = SourceSim("src")
    for n in range(12):
        sim.put({"pk": {"S": f"k{n % 5}"}, "n": {"N": str(n)}})
        if n % 3 == 2:
            sim.delete({"pk": {"S": f"k{(n + 1) % 5}"}})
    engine = build_engine(load(config), clock=clock, metrics=RecordingMetrics())
    try:
        assert engine.pipeline.process(sim.raw_records()).complete
    finally:
        engine.close()
    return engine, sim.items


def test_target_actions_suffice_for_every_write_and_one_less_is_refused(
        enforced: EnforcedStack, tmp_path: Path, clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target/ledger actions of the worker policy (no UpdateItem or BatchWriteItem: kcl_app never
    calls them; ConditionCheckItem for inline creates, which check the tombstone table) carry puts,
    overwrites and deletes in both modes; without dynamodb:DeleteItem every delete is refused by name
    and parked, nothing lost."""
    suffix = uuid.uuid4().hex[:6]
    table, minus_table = f"t-{suffix}", f"t-minus-{suffix}"
    arns = [table, f"{table}-inline", minus_table, f"{minus_table}-inline"]
    params = _policy_parameters(f"app-{suffix}", f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/s", arns)
    # only what the worker role grants on target and ledger tables (the KCL's own tables aside)
    actions = sorted({a for s in worker_statements(params) if s["Sid"] in ("WriteTargetTables", "WriteLedgerTables")
                      for a in s["Action"]})
    assert TARGET_REMOVED_ACTION in actions and set(actions) <= set(moto_enforcement_policy(params)["Statement"][0][
        "Action"])
    assert not {"dynamodb:UpdateItem", "dynamodb:BatchWriteItem"} & set(actions)
    assert "dynamodb:ConditionCheckItem" in actions
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
    worker = enforced.user(f"writer-{suffix}", policy)
    minus = dict(policy, Statement=[dict(policy["Statement"][0],
                                         Action=[a for a in actions if a != TARGET_REMOVED_ACTION])])
    worker_minus = enforced.user(f"writer-minus-{suffix}", minus)

    engine, expected = _writes_with(enforced, worker, tmp_path / "full", table, clock, monkeypatch)
    admin = enforced.client("dynamodb", TARGET_REGION)
    for name in (table, f"{table}-inline"):
        assert set(scan(admin, name)) == set(expected), name
        assert engine.dead_letters.depth(name) == 0  # type: ignore[attr-defined]

    engine, expected = _writes_with(enforced, worker_minus, tmp_path / "minus", minus_table, clock, monkeypatch)
    for name in (minus_table, f"{minus_table}-inline"):
        parked = [entry for _, entry in engine.dead_letters.read(name)]
        assert parked, f"{name}: the deletes are parked"
        assert all(f"not authorized to perform: {TARGET_REMOVED_ACTION}" in e.reason for e in parked), parked[0].reason
