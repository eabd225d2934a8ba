"""The continuous verification's alarms (alarms.yaml, ContinuousVerify=true) and its systemd unit."""

from __future__ import annotations

import shlex
from pathlib import Path

import boto3

from kcl_app.commands import build_parser
from tests.infra.policy import render
from tests.infra.test_alarms import PARAMS

UNIT = Path(__file__).resolve().parents[2] / "infra" / "systemd" / "tablesync-verify.service"


def _verify_alarms(enabled: str) -> dict[str, dict]:  # type: ignore[type-arg]
    resources = render("alarms.yaml", {**PARAMS, "ContinuousVerify": enabled})["Resources"]
    return {n: r["Properties"] for n, r in resources.items() if n.startswith("Verify")}


def test_verify_alarms_exist_only_when_the_verifier_runs() -> None:
    assert _verify_alarms("false") == {}
    alarms = _verify_alarms("true")
    assert set(alarms) == {"VerifyUnrepairedAlarmprodeu", "VerifyUnrepairedAlarmstagingus",
                           "VerifyBehindAlarmprodeu", "VerifyBehindAlarmstagingus"}
    unrepaired, behind = alarms["VerifyUnrepairedAlarmprodeu"], alarms["VerifyBehindAlarmstagingus"]
    assert (unrepaired["MetricName"], unrepaired["Statistic"], unrepaired["Threshold"]) == (
        "UnrepairedDivergences", "Sum", 0)
    assert unrepaired["Dimensions"] == [{"Name": "Target", "Value": "prod-eu"}]
    assert (behind["MetricName"], behind["TreatMissingData"]) == ("PassBehindSeconds", "breaching")
    assert behind["Dimensions"] == [{"Name": "Target", "Value": "staging.us"}]


def test_verify_alarms_are_accepted_by_put_metric_alarm(aws: boto3.Session) -> None:
    cloudwatch = aws.client("cloudwatch")
    alarms = _verify_alarms("true")
    for name, props in alarms.items():
        cloudwatch.put_metric_alarm(AlarmName=name, **{**props, "Threshold": float(props["Threshold"])})
    assert {a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"]} == set(alarms)


def test_the_unit_runs_a_command_line_the_cli_accepts() -> None:
    lines = dict(line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line and line[0] != "#")
    argv = shlex.split(lines["ExecStart"])
    assert argv[0].endswith("/tablesync")
    args = build_parser(["verify"]).parse_args(argv[1:])
    assert args.continuous and args.repair and args.state_dir == "/var/lib/tablesync/verify"
    assert lines["KillSignal"] == "SIGTERM" and lines["Restart"] == "always"
