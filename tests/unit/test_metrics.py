"""EMF metrics: valid Embedded Metric Format documents, one per line, on the given stream only."""

from __future__ import annotations

import io
import json
import math
import random

import pytest

from kcl_app.adapters.metrics import MAX_SAMPLES, EmfMetrics, NullMetrics, RecordingMetrics
from kcl_app.adapters.metrics import for_command as metrics_for_command


def emitted(stream: io.StringIO) -> list[dict]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def assert_valid_emf(doc: dict) -> None:
    """The rules of the EMF specification that CloudWatch enforces."""
    meta = doc["_aws"]
    assert isinstance(meta["Timestamp"], int) and meta["Timestamp"] > 1_600_000_000_000
    (directive,) = meta["CloudWatchMetrics"]
    for dimension_set in directive["Dimensions"]:
        assert isinstance(dimension_set, list)
        for name in dimension_set:
            assert isinstance(doc[name], str), f"dimension {name} must be a string member"
    for metric in directive["Metrics"]:
        value = doc[metric["Name"]]
        assert isinstance(value, int | float) or (isinstance(value, list) and len(value) <= MAX_SAMPLES)
        assert metric["Unit"] in ("Count", "Milliseconds", "None")


def test_a_document_is_valid_emf_and_goes_to_the_given_stream(capsys) -> None:
    stream = io.StringIO()
    metrics = EmfMetrics(stream, extra_dimensions={"Shard": "shardId-000000000001"})
    metrics.emit({"Target": "eu"}, {"Applied": 3, "Parked": 0}, {"LagMs": [12.3456, 40.0]})
    (doc,) = emitted(stream)
    assert_valid_emf(doc)
    directive = doc["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "tablesync"
    assert directive["Dimensions"] == [["Shard", "Target"]]
    assert directive["Metrics"] == [
        {"Name": "Applied", "Unit": "Count"},
        {"Name": "Parked", "Unit": "Count"},
        {"Name": "LagMs", "Unit": "Milliseconds"},
    ]
    assert doc["Target"] == "eu" and doc["Shard"] == "shardId-000000000001"
    assert doc["Applied"] == 3 and doc["Parked"] == 0
    assert doc["LagMs"] == [12.346, 40.0]
    out = capsys.readouterr()
    assert out.out == "" and out.err == "", "nothing may reach stdout (the KCL protocol channel)"


def test_the_default_stream_is_stderr_never_stdout(capsys) -> None:
    EmfMetrics(namespace="custom").emit({"Target": "t"}, {"Applied": 1})
    out = capsys.readouterr()
    assert out.out == ""
    doc = json.loads(out.err)
    assert_valid_emf(doc)
    assert doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "custom"


def test_empty_samples_are_left_out_and_an_empty_document_is_not_written() -> None:
    stream = io.StringIO()
    metrics = EmfMetrics(stream)
    metrics.emit({"Target": "t"}, {}, {"LagMs": []})
    assert stream.getvalue() == ""
    metrics.emit({"Target": "t"}, {"Applied": 0}, {"LagMs": []})
    (doc,) = emitted(stream)
    assert "LagMs" not in doc
    assert [m["Name"] for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]] == ["Applied"]


def cloudwatch_percentile(docs: list[dict], name: str, p: float) -> float:
    """The percentile CloudWatch computes for ``name`` over a period: every value of every
    document pooled (a value listed k times counts k times), nearest rank."""
    pooled = sorted(v for d in docs for v in (d[name] if isinstance(d.get(name), list) else []))
    return pooled[max(0, math.ceil(p / 100 * len(pooled)) - 1)]


def exact_percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@pytest.mark.parametrize("size", [1, 99, 100, 101, 1000, 4321])
def test_every_sample_is_counted_so_cloudwatch_percentiles_are_exact(size: int) -> None:
    lags = heavy_tail(size, size)
    stream = io.StringIO()
    EmfMetrics(stream).emit({"Target": "t"}, {"Applied": size, "Parked": 1}, {"LagMs": lags})
    docs = emitted(stream)
    for doc in docs:
        assert_valid_emf(doc)
        assert doc["Target"] == "t"
    assert len(docs) == math.ceil(size / MAX_SAMPLES)
    assert sum(len(d["LagMs"]) for d in docs) == size
    # counters once: a sum over the documents is the real total
    assert sum(d.get("Applied", 0) for d in docs) == size
    assert sum(d.get("Parked", 0) for d in docs) == 1
    for p in (50, 90, 99, 99.9, 100):
        assert cloudwatch_percentile(docs, "LagMs", p) == pytest.approx(exact_percentile(lags, p), abs=5e-4)


def heavy_tail(size: int, seed: int) -> list[float]:
    """Lags as a lease hand-off gives them: most ~200 ms, 2 % in the seconds."""
    rng = random.Random(seed)
    return [rng.lognormvariate(5.3, 0.3) if rng.random() > 0.02 else rng.uniform(3000, 5200)
            for _ in range(size)]


def test_the_check_can_fail_down_sampling_to_one_document_misses_p99() -> None:
    """What the check above guards against: 100 evenly picked values of 4321 move p99 off."""
    lags = heavy_tail(4321, 0)
    ordered = sorted(lags)
    step = (len(ordered) - 1) / (MAX_SAMPLES - 1)
    sampled = [{"LagMs": [ordered[round(i * step)] for i in range(MAX_SAMPLES)]}]
    assert cloudwatch_percentile(sampled, "LagMs", 99) != pytest.approx(exact_percentile(lags, 99), abs=5e-4)


def test_one_line_per_emission() -> None:
    stream = io.StringIO()
    metrics = EmfMetrics(stream)
    for i in range(3):
        metrics.emit({"Target": f"t{i}"}, {"Applied": i})
    docs = emitted(stream)
    assert [d["Target"] for d in docs] == ["t0", "t1", "t2"]
    for doc in docs:
        assert_valid_emf(doc)


def test_null_metrics_write_nothing_and_commands_use_the_metrics_file(tmp_path, capsys) -> None:
    quiet = metrics_for_command("tablesync", {})
    assert isinstance(quiet, NullMetrics)
    quiet.emit({"Target": "t"}, {"Applied": 1}, {"LagMs": [1.0]})
    path = tmp_path / "metrics.jsonl"
    to_file = metrics_for_command("ns", {"TABLESYNC_METRICS_FILE": str(path)})
    to_file.emit({"Target": "t"}, {"Applied": 2})
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    (doc,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert_valid_emf(doc)
    assert doc["Applied"] == 2 and doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "ns"


def test_recording_metrics_totals_by_dimension() -> None:
    rec = RecordingMetrics()
    rec.emit({"Target": "a"}, {"Applied": 2}, {"LagMs": [1.0]})
    rec.emit({"Target": "b"}, {"Applied": 5})
    rec.emit({"Target": "a"}, {"Applied": 1, "Parked": 1})
    assert rec.total("Applied") == 8
    assert rec.total("Applied", Target="a") == 3
    assert rec.total("Parked", Target="b") == 0
    assert rec.emitted[0][2] == {"LagMs": [1.0]}
