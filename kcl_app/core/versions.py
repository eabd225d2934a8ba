"""Versions: the total order every target agrees on.

A change's version is its `ApproximateCreationDateTime` normalised to microseconds, with the
change's `eventID` as a deterministic tie-break. Every target compares the same two numbers and
strings, so every target picks the same winner, whatever order the records arrive in.

How the precision is known: the Kinesis streaming destination sends an integer number of
milliseconds or microseconds since the epoch (per its `ApproximateCreationDateTimePrecision`).
The two ranges cannot overlap for any date between 1973 and 2286: a millisecond timestamp is
below 10**13, a microsecond one above 10**14. A configured precision overrides the inference.

Limit, stated plainly: two changes to the *same item* within the same timestamp unit are ordered
by eventID, not by the order DynamoDB applied them. At MICROSECOND precision this cannot happen
for one item in practice; at MILLISECOND precision it can, and `tablesync verify --repair`
settles it. Prefer MICROSECOND (the infra templates set it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Precision = Literal["MILLISECOND", "MICROSECOND", "auto"]

_MICROS_FLOOR = 10**14  # 1973-03-03 in microseconds; 5138-11-16 in milliseconds


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """Ordered by (micros, tiebreak). Immutable and hashable."""

    micros: int
    tiebreak: str = ""

    def token(self) -> str:
        """A string whose lexicographic order equals the version order (stored in ledgers)."""
        return f"{self.micros:020d}#{self.tiebreak}"

    @classmethod
    def from_token(cls, token: str) -> Version:
        micros, _, tiebreak = token.partition("#")
        return cls(int(micros), tiebreak)


def to_micros(value: int | float, precision: Precision = "auto") -> int:
    """Normalise an ApproximateCreationDateTime to integer microseconds since the epoch."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("ApproximateCreationDateTime must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("ApproximateCreationDateTime must be a finite number")
    if value < 0:
        raise ValueError("ApproximateCreationDateTime must not be negative")
    if precision == "MICROSECOND":
        return int(value)
    if precision == "MILLISECOND":
        return int(value) * 1000
    if value >= _MICROS_FLOOR:
        return int(value)
    if isinstance(value, float) and value < 10**11:
        # DynamoDB Streams (not the Kinesis destination) sends epoch seconds with a fraction.
        return round(value * 1_000_000)
    return int(value) * 1000


def newer(incoming: Version, current: Version | None) -> bool:
    """True when `incoming` must replace `current`. Idempotent: an equal version is not newer."""
    return current is None or incoming > current
