"""Structured logs: one JSON object per line on stderr (stdout is the KCL protocol channel)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **self.static,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler on whatever ``sys.stderr`` is when a record is written, not when the
    handler was made (a replaced or closed stderr -- a test's capture -- is never written to)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup(level: str = "INFO", json_lines: bool = True, **static: Any) -> None:
    """Route every log record to stderr, as JSON lines (workers) or plain text (interactive commands)."""
    handler = StderrHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter(static))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_static(**static: Any) -> None:
    """Add fields (e.g. the shard id) to every later log line."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.static.update(static)


class LogLineWriter:
    """A text stream that turns what is written to it into log records, one per line.

    For code that writes free text to a file it was given (kclpy's ``KCLProcess`` writes its
    errors and tracebacks to ``error_file``): passed instead of ``sys.stderr``, those lines
    come out as JSON log lines like every other, instead of raw text in the daemon's log.
    """

    def __init__(self, logger: logging.Logger, level: int = logging.ERROR) -> None:
        self.logger = logger
        self.level = level
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.strip():
                self.logger.log(self.level, "%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            self.logger.log(self.level, "%s", self._pending.rstrip())
        self._pending = ""
