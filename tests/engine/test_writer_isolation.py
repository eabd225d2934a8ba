"""A writer that raises for one write (a bug, a malformed item) fails that write alone.

A real LedgerWriter on moto, wrapped so that it raises a non-AWS exception whenever the writes it is
given contain a chosen key: the pipeline splits the batch until that write stands alone, applies
every other one (read back from the table) and parks only that one, with the exception as reason.
Redrive of a store in which one entry still raises settles all the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3

from kcl_app.adapters.dead_letters import DirectoryDeadLetters
from kcl_app.adapters.ledger import LedgerWriter, ensure_ledger
from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.core.plan import TargetRule, Write
from kcl_app.pipeline import Pipeline
from kcl_app.ports import ApplyResult, DeadLetter
from kcl_app.redrive import redrive
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table, scan_all


class RaisesFor:
    """Delegates to `inner`, but raises `errors[pk]` for any call that includes that key; records calls."""

    def __init__(self, inner: LedgerWriter, errors: dict[str, BaseException]) -> None:
        self.name = inner.name
        self.inner = inner
        self.errors = errors
        self.calls: list[list[str]] = []

    def apply(self, writes: Sequence[Write], deadline: float) -> ApplyResult:
        keys = [w.key["pk"]["S"] for w in writes]
        self.calls.append(keys)
        for pk in keys:
            if pk in self.errors:
                raise self.errors[pk]
        return self.inner.apply(writes, deadline)


def build(clock: Any, tmp_path: Path, errors: dict[str, BaseException]) -> tuple[Pipeline, RaisesFor, Any, Any]:
    client = boto3.client("dynamodb", region_name="eu-west-1")
    create_table(client, "copy")
    ensure_ledger(client, "ledger")
    writer = RaisesFor(LedgerWriter("t", client, "copy", "ledger", clock), errors)
    sink = DirectoryDeadLetters(tmp_path / "dl")
    pipeline = Pipeline([TargetRule("t", "src")], {"t": writer}, sink, RecordingMetrics(), clock)
    return pipeline, writer, client, sink


def test_only_the_write_that_raises_is_parked(moto, clock, tmp_path) -> None:
    pipeline, writer, client, sink = build(clock, tmp_path, {"k3": RecursionError("maximum recursion depth"),
                                                            "k7": TypeError("unhashable type: 'dict'")})
    sim = SourceSim("src", start_micros=int((clock.now() - 60) * 1e6))
    for i in range(10):
        sim.put({"pk": {"S": f"k{i}"}, "n": {"N": str(i)}})
    result = pipeline.process(sim.raw_records())
    assert result.complete and result.targets["t"].applied == 8 and result.targets["t"].parked == 2
    written = {item["pk"]["S"] for item in scan_all(client, "copy").values()}
    assert written == {f"k{i}" for i in range(10)} - {"k3", "k7"}
    parked = {entry.key_id: entry.reason for _, entry in sink.read("t")}
    assert len(parked) == 2
    assert sorted(r.split("(")[0] for r in parked.values()) == ["writer error: RecursionError",
                                                                "writer error: TypeError"]
    assert ["k3"] in writer.calls and ["k7"] in writer.calls  # split until each stood alone
    pipeline.close()


def test_redrive_settles_every_entry_but_the_one_that_still_raises(moto, clock, tmp_path) -> None:
    pipeline, writer, client, sink = build(clock, tmp_path, {"k17": RecursionError("nested 300 levels")})
    sim = SourceSim("src", start_micros=int((clock.now() - 60) * 1e6))
    for i in range(50):
        sim.put({"pk": {"S": f"k{i}"}, "n": {"N": str(i)}})
    sink.park([DeadLetter("t", "target was down", raw.data, raw.sequence_number, raw.shard_id, clock.now())
               for raw in sim.raw_records()])
    report = redrive(pipeline, sink, "t", batch_size=50)
    assert report.read == 50 and report.applied == 49 and report.still_failing == 1
    assert {item["pk"]["S"] for item in scan_all(client, "copy").values()} == {f"k{i}" for i in range(50)} - {"k17"}
    left = [entry for _, entry in sink.read("t")]
    assert len(left) == 1 and "RecursionError" in left[0].reason
    pipeline.close()
