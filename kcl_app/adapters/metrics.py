"""Metrics as CloudWatch Embedded Metric Format (EMF) lines.

One JSON object per line; the CloudWatch agent (or Lambda/ECS log drivers) turns the lines of a
log stream into metrics without any PutMetricData call. Values that are samples (lag) are sent
as arrays, from which CloudWatch computes percentiles. Format reference: AWS documentation,
"Specification: Embedded metric format".
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO

UNITS = {"LagMs": "Milliseconds"}
MAX_SAMPLES = 100  # EMF allows 100 values per metric in one document


class EmfMetrics:
    """Writes EMF documents to a text stream (stderr by default: stdout is the KCL's)."""

    def __init__(self, stream: IO[str] | None = None, namespace: str = "tablesync",
                 extra_dimensions: Mapping[str, str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.namespace = namespace
        self.extra = dict(extra_dimensions or {})
        self._lock = threading.Lock()

    def emit(self, dimensions: Mapping[str, str], counters: Mapping[str, float],
             samples: Mapping[str, Sequence[float]] | None = None) -> None:
        dims = {**self.extra, **dimensions}
        doc: dict[str, object] = dict(dims)
        metrics = []
        for name, value in counters.items():
            doc[name] = value
            metrics.append({"Name": name, "Unit": UNITS.get(name, "Count")})
        for name, values in (samples or {}).items():
            if not values:
                continue
            doc[name] = [round(v, 3) for v in _bounded(values)]
            metrics.append({"Name": name, "Unit": UNITS.get(name, "None")})
        if not metrics:
            return
        doc["_aws"] = {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {"Namespace": self.namespace, "Dimensions": [sorted(dims)], "Metrics": metrics}
            ],
        }
        line = json.dumps(doc, separators=(",", ":"))
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def _bounded(values: Sequence[float]) -> Sequence[float]:
    """At most MAX_SAMPLES values, evenly picked from the sorted list so percentiles survive."""
    if len(values) <= MAX_SAMPLES:
        return values
    ordered = sorted(values)
    step = (len(ordered) - 1) / (MAX_SAMPLES - 1)
    return [ordered[round(i * step)] for i in range(MAX_SAMPLES)]


class RecordingMetrics:
    """Keeps every emission in memory (tests, the demo's progress display)."""

    def __init__(self) -> None:
        self.emitted: list[tuple[dict[str, str], dict[str, float], dict[str, list[float]]]] = []
        self._lock = threading.Lock()

    def emit(self, dimensions: Mapping[str, str], counters: Mapping[str, float],
             samples: Mapping[str, Sequence[float]] | None = None) -> None:
        with self._lock:
            self.emitted.append(
                (dict(dimensions), dict(counters), {k: list(v) for k, v in (samples or {}).items()})
            )

    def total(self, counter: str, **dimensions: str) -> float:
        with self._lock:
            return sum(
                c.get(counter, 0)
                for d, c, _ in self.emitted
                if all(d.get(k) == v for k, v in dimensions.items())
            )
