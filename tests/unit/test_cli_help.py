"""`tablesync COMMAND --help` explains the command: what it does and its exit codes, not just flags."""

from __future__ import annotations

import pytest

from kcl_app.cli import build_parser

COMMANDS = ["local", "run", "demo", "check", "status", "backfill", "verify", "redrive", "parked"]


def help_of(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(command, capsys)
    description = text.split("\n\n")[1]
    assert description.startswith(f"`tablesync {command}"), description
    assert len(text.split("options:")[0].split()) > 40, "more than a one-line summary before the flags"
    assert "``" not in text


@pytest.mark.parametrize("command", ["local", "run", "check", "status", "backfill", "verify", "redrive", "parked"])
def test_commands_state_their_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(command, capsys)
    assert "Exit codes:" in text or "Exit status:" in text
