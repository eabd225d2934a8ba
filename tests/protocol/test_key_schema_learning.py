"""The source's key schema is learned once per process: from the config, else DescribeTable of the
source, else of a target table; when none answers, the worker stops with an error naming the key."""

from __future__ import annotations

import io
import json
from typing import Any

import boto3
import pytest
from amazon_kclpy import kcl

from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.adapters.processor import EXIT_CANNOT_START, ReplicationProcessor
from kcl_app.compose import build_engine, learn_key_schemas
from kcl_app.config import parse
from kcl_app.core.checks import KeySchema
from kcl_app.core.errors import ConfigError

pytestmark = pytest.mark.usefixtures("moto")


def create(client: Any, table: str, schema: list[tuple[str, str]]) -> None:
    client.create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t in schema],
        KeySchema=[{"AttributeName": n, "KeyType": ("HASH", "RANGE")[i]} for i, (n, _) in enumerate(schema)])


class Describing:
    """A DynamoDB client that answers DescribeTable from a dict and records the calls."""

    def __init__(self, tables: dict[str, Any]) -> None:
        self.tables = tables
        self.calls: list[str] = []

    def describe_table(self, TableName: str) -> Any:  # noqa: N803 - boto3's parameter name
        self.calls.append(TableName)
        if TableName not in self.tables:
            raise RuntimeError(f"no table {TableName}")
        return {"Table": self.tables[TableName]}


CONFIG = {"targets": [{"name": "t", "source_table": "orders", "region": "eu-west-1", "table": "copy"}]}


def test_a_configured_schema_asks_nothing() -> None:
    cfg = parse({"source": {"key_schema": {"orders": ["pk:S", "sk:N"]}}, **CONFIG})
    target, source = Describing({}), Describing({})
    assert learn_key_schemas(cfg, {"t": target}, source) == {"orders": KeySchema(("pk", "S"), ("sk", "N"))}
    assert target.calls == source.calls == []


def test_the_source_is_asked_first_then_a_target() -> None:
    described = {"AttributeDefinitions": [{"AttributeName": "sk", "AttributeType": "B"},
                                          {"AttributeName": "pk", "AttributeType": "S"}],
                 "KeySchema": [{"AttributeName": "sk", "KeyType": "RANGE"}, {"AttributeName": "pk", "KeyType": "HASH"}]}
    cfg = parse(CONFIG)
    source, target = Describing({"orders": described}), Describing({})
    assert learn_key_schemas(cfg, {"t": target}, source) == {"orders": KeySchema(("pk", "S"), ("sk", "B"))}
    assert (source.calls, target.calls) == (["orders"], [])
    source, target = Describing({}), Describing({"copy": described})
    assert learn_key_schemas(cfg, {"t": target}, source)["orders"].sort == ("sk", "B")
    assert (source.calls, target.calls) == (["orders"], ["copy"])


def test_a_schema_that_cannot_be_learned_is_a_clear_error() -> None:
    cfg = parse(CONFIG, "targets.toml")
    with pytest.raises(ConfigError) as caught:
        learn_key_schemas(cfg, {"t": Describing({})}, Describing({}))
    message = str(caught.value)
    assert message.startswith("targets.toml: source.key_schema: cannot learn the key schema of source table 'orders'")
    assert "source table orders: RuntimeError" in message and "target t table copy: RuntimeError" in message
    assert '[source.key_schema] orders = ["pk:S"]' in message


def test_the_worker_learns_from_moto_and_stops_clearly_without_a_schema(clock: Any, tmp_path: Any) -> None:
    client = boto3.client("dynamodb", region_name="eu-west-1")
    create(client, "copy", [("pk", "S"), ("sk", "N")])
    cfg = parse({**CONFIG, "targets": [{**CONFIG["targets"][0], "dead_letter": {"path": str(tmp_path)}}]})
    engine = build_engine(cfg, clock=clock, metrics=RecordingMetrics())
    assert engine.pipeline.checks.key_schemas == {"orders": KeySchema(("pk", "S"), ("sk", "N"))}
    engine.close()

    gone = parse({**CONFIG, "targets": [{**CONFIG["targets"][0], "table": "absent",
                                         "dead_letter": {"path": str(tmp_path)}}]})
    exits: list[int] = []
    proc = ReplicationProcessor(lambda: build_engine(gone, clock=clock, metrics=RecordingMetrics()).pipeline,
                                clock, RecordingMetrics(), exit=exits.append)
    script = json.dumps({"action": "initialize", "shardId": "shardId-1", "sequenceNumber": "LATEST",
                         "subSequenceNumber": 0}) + "\n"
    kcl.KCLProcess(proc, input_file=io.StringIO(script), output_file=io.StringIO(), error_file=io.StringIO()).run()
    assert exits == [EXIT_CANNOT_START]


def test_without_any_region_the_source_is_asked_in_the_targets_region(monkeypatch: pytest.MonkeyPatch) -> None:
    # no [source] region, no AWS_REGION / AWS_DEFAULT_REGION: building the source client used to
    # raise NoRegionError before any table was asked
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    create(boto3.client("dynamodb", region_name="eu-west-1"), "orders", [("pk", "S")])
    target = Describing({})
    assert learn_key_schemas(parse(CONFIG), {"t": target}) == {"orders": KeySchema(("pk", "S"))}
    assert target.calls == []
