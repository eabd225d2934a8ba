"""Cross-account targets: writes go through an assumed role (with ExternalId), refreshed before expiry."""

from __future__ import annotations

import datetime as dt
import json

import boto3
import pytest

from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.compose import build_engine, session_for
from kcl_app.config import parse
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table, scan_all

pytestmark = pytest.mark.usefixtures("moto")

ROLE = "arn:aws:iam::123456789012:role/tablesync-writer"


def _config(tmp_path):
    iam = boto3.client("iam", region_name="us-east-1")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"AWS": "arn:aws:iam::123456789012:root"}}]}
    iam.create_role(RoleName="tablesync-writer", AssumeRolePolicyDocument=json.dumps(trust))
    return parse({"targets": [{"name": "x", "source_table": "src", "region": "eu-west-1", "table": "copy-x",
                               "role_arn": ROLE, "external_id": "shared-secret",
                               "dead_letter": {"path": str(tmp_path / "dlq")}}]})


def test_writes_use_the_assumed_role_and_credentials_refresh_before_expiry(clock, tmp_path) -> None:
    cfg = _config(tmp_path)
    session = session_for(cfg.targets[0])
    calls: list[dict] = []
    creds = session.get_credentials()
    # every AssumeRole the refresher makes is recorded (ExternalId included)
    fetcher = creds._refresh_using  # the bound fetch method of botocore's AssumeRoleCredentialFetcher
    fetch_owner = fetcher.__self__
    original = fetch_owner._get_credentials

    def recording():
        response = original()
        calls.append({"RoleArn": fetch_owner._role_arn, **fetch_owner._assume_kwargs})
        return response

    fetch_owner._get_credentials = recording
    first = creds.get_frozen_credentials()
    assert first.access_key != "testing" and first.token, "assumed-role credentials, with a session token"
    assert calls == [{"RoleArn": ROLE, "RoleSessionName": "tablesync-x", "ExternalId": "shared-secret"}]

    client = session.client("dynamodb", region_name="eu-west-1")
    create_table(client, "copy-x")
    engine = build_engine(cfg, clock=clock, metrics=RecordingMetrics(), clients={"x": client})
    sim = SourceSim("src")
    sim.put({"pk": {"S": "a"}, "v": {"N": "1"}})
    assert engine.pipeline.process(sim.raw_records()).complete
    assert scan_all(client, "copy-x") == {'{"pk":{"S":"a"}}': {"pk": {"S": "a"}, "v": {"N": "1"}}}

    # near expiry (inside botocore's mandatory refresh window), the next use assumes the role again
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    creds._expiry_time = soon
    for cached in fetch_owner._cache.values():  # the fetcher's own cache ages with the same clock
        cached["Credentials"]["Expiration"] = soon.isoformat()
    sim.put({"pk": {"S": "b"}})
    assert engine.pipeline.process(sim.raw_records()[1:]).complete
    assert len(calls) == 2
    assert set(scan_all(client, "copy-x")) == {'{"pk":{"S":"a"}}', '{"pk":{"S":"b"}}'}
    engine.close()
