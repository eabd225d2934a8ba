"""Metrics as CloudWatch Embedded Metric Format (EMF) lines.

One JSON object per line; the CloudWatch agent (or Lambda/ECS log drivers) turns the lines of a
log stream into metrics without any PutMetricData call. Values that are samples (lag) are sent
as arrays, from which CloudWatch computes percentiles. Format reference: AWS documentation,
"Specification: Embedded metric format" (an array holds at most 100 values).

Every sample is counted: a metric with more than 100 samples is spread over several documents
(same dimensions, 100 values each), never down-sampled. CloudWatch pools the values of all the
documents of a period, so the percentiles it computes are those of the samples themselves
(values are rounded to the microsecond, the only error). Counters are written once, in the
first document, so sums stay right.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO

import orjson

UNITS = {"LagMs": "Milliseconds", "ApplyMs": "Milliseconds", "DeliveryMs": "Milliseconds"}
MAX_SAMPLES = 100  # EMF allows 100 values per metric in one document


class EmfMetrics:
    """Writes EMF documents to a text stream (stderr by default: stdout is the KCL's)."""

    def __init__(self, stream: IO[str] | None = None, namespace: str = "tablesync",
                 extra_dimensions: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock  # epoch seconds, for the documents' Timestamp
        self.namespace = namespace
        self.extra = dict(extra_dimensions or {})
        self._lock = threading.Lock()

    def emit(self, dimensions: Mapping[str, str], counters: Mapping[str, float],
             samples: Mapping[str, Sequence[float]] | None = None) -> None:
        """Write the counters and every sample: ``ceil(n / MAX_SAMPLES)`` documents for the
        metric with the most samples (one when there are none), counters in the first."""
        dims = {**self.extra, **dimensions}
        chunks = {name: _chunks(values) for name, values in (samples or {}).items() if values}
        documents = max([len(c) for c in chunks.values()], default=1)
        lines = []
        for index in range(documents):
            doc: dict[str, object] = dict(dims)
            metrics = []
            if index == 0:
                for name, value in counters.items():
                    doc[name] = value
                    metrics.append({"Name": name, "Unit": UNITS.get(name, "Count")})
            for name, parts in chunks.items():
                if index < len(parts):
                    doc[name] = parts[index]
                    metrics.append({"Name": name, "Unit": UNITS.get(name, "None")})
            if not metrics:
                continue
            doc["_aws"] = {
                "Timestamp": int(self.clock() * 1000),
                "CloudWatchMetrics": [
                    {"Namespace": self.namespace, "Dimensions": [sorted(dims)], "Metrics": metrics}
                ],
            }
            lines.append(orjson.dumps(doc).decode() + "\n")  # compact, as json.dumps with separators
        if not lines:
            return
        with self._lock:
            self.stream.write("".join(lines))
            self.stream.flush()


def _chunks(values: Sequence[float]) -> list[list[float]]:
    """``values`` (rounded to 3 decimals) in consecutive runs of at most MAX_SAMPLES."""
    rounded = [round(float(v), 3) for v in values]
    return [rounded[i:i + MAX_SAMPLES] for i in range(0, len(rounded), MAX_SAMPLES)]


class NullMetrics:
    """Drops every emission: for commands run by hand when no metrics file is configured, whose
    stderr is for people (an EMF document there is noise, and no agent ships it)."""

    def emit(self, dimensions: Mapping[str, str], counters: Mapping[str, float],
             samples: Mapping[str, Sequence[float]] | None = None) -> None:
        return None


def for_command(namespace: str, environ: Mapping[str, str]) -> EmfMetrics | NullMetrics:
    """Metrics of an interactive command (redrive, backfill): EMF appended to
    ``TABLESYNC_METRICS_FILE`` when it is set -- where the workers' metrics go, for the agent to
    ship -- else nothing. Raises OSError when the file cannot be opened."""
    path = environ.get("TABLESYNC_METRICS_FILE")
    if not path:
        return NullMetrics()
    stream = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - process lifetime
    return EmfMetrics(stream=stream, namespace=namespace)


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
