"""The global flags, `--version` and the region/profile conventions, as a user meets them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ProfileNotFound

from kcl_app import compose
from kcl_app.cli import COMMANDS, build_parser
from kcl_app.commands import command_module

ROOT = Path(__file__).resolve().parents[2]


def tablesync(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kcl_app.cli", *argv], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT)}, timeout=60, check=False)


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """An environment with credentials but no region and no profile anywhere (no shared files)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")}
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-credentials")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


@pytest.fixture
def aws_defaults() -> Iterator[None]:
    yield
    compose.configure_aws()  # later tests get the standard chain again


def test_version_names_the_installed_distribution(bare_env: dict[str, str]) -> None:
    done = tablesync("--version", env=bare_env)
    assert done.returncode == 0
    assert done.stdout.strip().startswith("tablesync ")
    assert done.stdout.split()[1][0].isdigit() or done.stdout.split()[1] == "unknown"


REQUIRED = {"run": ["--properties", "p", "--config", "c"], "status": ["--app", "a"], "check": [],
            "backfill": ["--config", "c", "--source-table", "t"], "verify": ["--config", "c"],
            "redrive": ["--config", "c", "--target", "x"], "demo": [], "local": ["info"],
            "parked": ["list", "--config", "c"],
            "seed": ["--config", "c", "--target", "x", "--bucket", "b"],
            "pause": ["--config", "c", "--target", "x"], "resume": ["--config", "c", "--target", "x"]}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_registered_the_same_way(command: str) -> None:
    """add_parser + run, nothing else: the dispatcher calls the module's run, no handler default."""
    module = command_module(command)
    assert callable(module.add_parser) and callable(module.run)
    args = build_parser().parse_args([command, *REQUIRED[command]])
    assert args.command == command
    assert not hasattr(args, "func") and not hasattr(args, "handler")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "local"])
def test_global_flags_work_before_and_after_the_command(command: str) -> None:
    flags = ["--log-level", "DEBUG", "--log-json", "--profile", "ops", "--region", "eu-west-2"]
    required = REQUIRED[command]
    before = build_parser().parse_args([*flags, command, *required])
    after = build_parser().parse_args([command, *required, *flags])
    for args in (before, after):
        assert (args.log_level, args.log_json, args.profile, args.region) == ("DEBUG", True, "ops", "eu-west-2")
    neither = build_parser().parse_args([command, *required])
    assert (neither.profile, neither.region) == (None, None)  # the standard chain decides


def test_local_up_keeps_its_own_region_flag() -> None:
    args = build_parser().parse_args(["local", "up", "--region", "ap-south-1"])
    assert args.region == "ap-south-1"


def test_status_without_a_region_is_one_clear_line_and_exit_2(bare_env: dict[str, str]) -> None:
    done = tablesync("status", "--app", "orders-app", env=bare_env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "no AWS region" in done.stderr and "--region" in done.stderr


def test_an_unknown_profile_is_a_clear_error_not_a_traceback(bare_env: dict[str, str]) -> None:
    done = tablesync("status", "--app", "orders-app", "--profile", "no-such-profile", env=bare_env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "no-such-profile" in done.stderr and "--profile" in done.stderr


def test_compose_builds_every_client_from_the_profile_and_region(tmp_path: Path, aws_defaults: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.write_text("[profile ops]\nregion = eu-west-2\naws_access_key_id = a\naws_secret_access_key = b\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    compose.configure_aws(profile="ops")
    assert compose.base_session().profile_name == "ops"
    assert compose.lease_clients().region == "eu-west-2"  # the profile's region
    assert compose.lease_clients("sa-east-1").region == "sa-east-1"  # a command's own choice wins
    compose.configure_aws(profile="ops", region="ca-central-1")
    clients = compose.lease_clients()
    assert (clients.region, clients.kinesis.meta.region_name) == ("ca-central-1", "ca-central-1")
    compose.configure_aws()
    monkeypatch.setenv("AWS_REGION", "eu-north-1")  # botocore reads only AWS_DEFAULT_REGION: compose reads this one
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert compose.lease_clients().region == "eu-north-1"
    monkeypatch.delenv("AWS_REGION")
    assert compose.lease_clients().region == "us-west-2"
    compose.configure_aws(profile="missing")
    with pytest.raises(ProfileNotFound):
        compose.base_session()


def test_run_hands_the_profile_and_region_to_the_daemon() -> None:
    from argparse import Namespace

    from kcl_app.commands import run

    env = run.daemon_environment(Namespace(endpoint=None, region="eu-west-2", profile="ops"), {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "AWS_PROFILE": "ops", "AWS_REGION": "eu-west-2", "AWS_DEFAULT_REGION": "eu-west-2"}
