"""EMF metrics: valid Embedded Metric Format documents, one per line, on the given stream only."""

from __future__ import annotations

import io
import json

from kcl_app.adapters.metrics import MAX_SAMPLES, EmfMetrics, RecordingMetrics


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


def test_many_samples_are_bounded_and_keep_the_extremes() -> None:
    stream = io.StringIO()
    lags = [float(v) for v in range(1000, 0, -1)]
    EmfMetrics(stream).emit({"Target": "t"}, {}, {"LagMs": lags})
    (doc,) = emitted(stream)
    assert_valid_emf(doc)
    assert len(doc["LagMs"]) == MAX_SAMPLES
    assert doc["LagMs"][0] == 1.0 and doc["LagMs"][-1] == 1000.0
    assert doc["LagMs"] == sorted(doc["LagMs"])


def test_one_line_per_emission() -> None:
    stream = io.StringIO()
    metrics = EmfMetrics(stream)
    for i in range(3):
        metrics.emit({"Target": f"t{i}"}, {"Applied": i})
    docs = emitted(stream)
    assert [d["Target"] for d in docs] == ["t0", "t1", "t2"]
    for doc in docs:
        assert_valid_emf(doc)


def test_recording_metrics_totals_by_dimension() -> None:
    rec = RecordingMetrics()
    rec.emit({"Target": "a"}, {"Applied": 2}, {"LagMs": [1.0]})
    rec.emit({"Target": "b"}, {"Applied": 5})
    rec.emit({"Target": "a"}, {"Applied": 1, "Parked": 1})
    assert rec.total("Applied") == 8
    assert rec.total("Applied", Target="a") == 3
    assert rec.total("Parked", Target="b") == 0
    assert rec.emitted[0][2] == {"LagMs": [1.0]}
