"""The KCL daemon's side of the multi-lang protocol, scripted, for driving a record processor
through amazon-kclpy's real loop (`kcl.KCLProcess(processor, input_file=d, output_file=d, ...)`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


class ScriptedDaemon:
    """Scripted messages (a callable is run when reached: a step between two messages), and an
    answer to every checkpoint the processor sends. `sent` holds every message the processor wrote."""

    def __init__(self, script: list[dict[str, Any] | Callable[[], object]]) -> None:
        self.script = list(script)
        self.pending: list[str] = []
        self.sent: list[dict[str, Any]] = []
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            if line.strip():
                msg = json.loads(line)
                self.sent.append(msg)
                if msg["action"] == "checkpoint":
                    answer = {"action": "checkpoint", "sequenceNumber": msg["sequenceNumber"],
                              "subSequenceNumber": msg["subSequenceNumber"], "error": None}
                    self.pending.append(json.dumps(answer) + "\n")
        return len(text)

    def flush(self) -> None:
        pass

    def readline(self) -> str:
        if self.pending:
            return self.pending.pop(0)
        while self.script:
            step = self.script.pop(0)
            if callable(step):
                step()
                continue
            return json.dumps(step) + "\n"
        return ""

    def checkpoints(self) -> list[str | None]:
        return [m["sequenceNumber"] for m in self.sent if m["action"] == "checkpoint"]
