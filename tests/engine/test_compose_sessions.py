"""A shard process parses botocore's service models once, however many targets it writes to."""

from __future__ import annotations

import json

import boto3
import pytest

from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.compose import build_engine
from kcl_app.config import parse
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table, scan_all

pytestmark = pytest.mark.usefixtures("moto")

ROLE = "arn:aws:iam::123456789012:role/tablesync-writer"


def test_targets_share_one_model_loader_and_each_still_writes_with_its_own_credentials(clock, tmp_path) -> None:
    iam = boto3.client("iam", region_name="us-east-1")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"AWS": "arn:aws:iam::123456789012:root"}}]}
    iam.create_role(RoleName="tablesync-writer", AssumeRolePolicyDocument=json.dumps(trust))
    regions = {"a": "eu-west-1", "b": "us-west-2", "c": "ap-southeast-2"}
    targets = [{"name": n, "source_table": "src", "region": r, "table": f"copy-{n}",
                "dead_letter": {"path": str(tmp_path / "dlq")}} for n, r in regions.items()]
    targets[2]["role_arn"] = ROLE
    for n, r in regions.items():
        create_table(boto3.client("dynamodb", region_name=r), f"copy-{n}")
    engine = build_engine(parse({"targets": targets}), clock=clock, metrics=RecordingMetrics())

    clients = {name: writer.client for name, writer in engine.writers.items()}  # type: ignore[attr-defined]
    loaders = {id(c._loader) for c in clients.values()}
    assert len(loaders) == 1, "one parsed copy of the DynamoDB model for every target"
    assert clients["c"]._request_signer._credentials.access_key != clients["a"]._request_signer._credentials.access_key

    sim = SourceSim("src")
    sim.put({"pk": {"S": "k"}, "v": {"N": "1"}})
    assert engine.pipeline.process(sim.raw_records()).complete
    for n, r in regions.items():
        assert scan_all(boto3.client("dynamodb", region_name=r), f"copy-{n}") == {
            '{"pk":{"S":"k"}}': {"pk": {"S": "k"}, "v": {"N": "1"}}}


def test_source_and_target_clients_share_the_loader_and_heals_build_no_client_until_needed(
        clock, tmp_path, monkeypatch) -> None:
    from kcl_app import compose
    from kcl_app.adapters.lanes import LaneSettings

    create_table(boto3.client("dynamodb", region_name="eu-west-1"), "copy-a")
    config = parse({"targets": [{"name": "a", "source_table": "src", "region": "eu-west-1", "table": "copy-a",
                                 "dead_letter": {"path": str(tmp_path / "dlq")}}]})
    engine = build_engine(config, clock=clock, metrics=RecordingMetrics())
    source = compose.source_dynamodb(config)
    assert source._loader is engine.writers["a"].client._loader  # type: ignore[attr-defined]
    assert compose.base_session()._session.get_component("data_loader") is source._loader

    built: list[str] = []
    real = compose.source_dynamodb
    monkeypatch.setenv("TABLESYNC_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setattr(compose, "source_dynamodb", lambda *a, **k: built.append("source") or real(*a, **k))
    lanes = compose.build_lanes(config, engine.pipeline, engine.dead_letters, clock, RecordingMetrics(),
                                LaneSettings(background_interval=3600.0))
    lanes.tick()  # the first heal round of a healthy target: nothing parked, nothing to reread
    heal = lanes.healing("a")
    assert heal is not None
    heal.join(timeout=30)
    assert built == []
    lanes.close()
