"""Exceptions of the replication engine. Each carries the data a caller needs to act on it."""

from __future__ import annotations

from dataclasses import dataclass


class ReplicationError(Exception):
    """Base class of every error tablesync raises on purpose."""


@dataclass
class PoisonRecord(ReplicationError):
    """A stream record that cannot be decoded. It is parked with its raw bytes, never retried."""

    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass
class ConfigError(ReplicationError):
    """A configuration that cannot run. `where` names the file and key, `problem` what is wrong."""

    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


@dataclass
class ParkFailed(ReplicationError):
    """A dead-letter store refused entries: nothing past them may be checkpointed."""

    store: str
    reason: str

    def __str__(self) -> str:
        return f"dead-letter store {self.store!r} failed: {self.reason}"


@dataclass
class TransformFailed(ReplicationError):
    """A target's transform raised or returned something DynamoDB would refuse. `reason` names the
    attribute or the exception's type, never a value (it is logged and parked)."""

    target: str
    reason: str

    def __str__(self) -> str:
        return f"transform of target {self.target!r} failed: {self.reason}"
