"""Fixtures for the infra tests: an in-process moto account and a stack-deploy helper."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

INFRA_DIR = Path(__file__).resolve().parents[2] / "infra"
REGION = "us-east-1"


@pytest.fixture
def aws() -> Iterator[boto3.Session]:
    """A boto3 session bound to a fresh in-process moto account (no network)."""
    keys = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        with mock_aws():
            yield boto3.Session(region_name=REGION)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


Deploy = Callable[[str, Mapping[str, str]], dict[str, Any]]


@pytest.fixture
def deploy(aws: boto3.Session) -> Deploy:
    """Create a stack from ``infra/<name>`` and return ``describe_stacks`` of it.

    Fails the test unless the stack reaches CREATE_COMPLETE.
    """
    cfn = aws.client("cloudformation")

    def _deploy(name: str, parameters: Mapping[str, str]) -> dict[str, Any]:
        stack_name = "ts-" + name.split(".")[0]
        cfn.create_stack(
            StackName=stack_name,
            TemplateBody=(INFRA_DIR / name).read_text(),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
            Capabilities=["CAPABILITY_IAM"],
        )
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
        stack["OutputMap"] = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        stack["ResourceMap"] = {
            r["LogicalResourceId"]: r for r in cfn.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
        }
        return stack

    return _deploy
