"""The demo's progress line: a rolling lag window, the "behind" column, plurals."""

from __future__ import annotations

from pathlib import Path

from kcl_app.adapters.metrics import EmfMetrics
from kcl_app.commands.demo import Progress, plural


class Clocked:
    """EMF documents appended to a file, stamped with a chosen time (seconds)."""

    def __init__(self, path: Path) -> None:
        self.at = 0.0
        self.fh = path.open("a", encoding="utf-8")
        self.emf = EmfMetrics(self.fh, clock=lambda: self.at)

    def emit(self, *args: object) -> None:
        self.emf.emit(*args)  # type: ignore[arg-type]


def test_lag_percentiles_cover_the_last_window_only(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    emf = Clocked(path)
    progress = Progress(path, ["dr", "lite"], window=10)
    emf.at = 1000.0
    emf.emit({"Target": "dr"}, {"Applied": 150, "Parked": 0}, {"LagMs": [4000.0] * 150})  # a hand-off
    progress.poll(now=1001.0)
    assert progress.percentiles() == (4000.0, 4000.0)
    emf.at = 1012.0
    emf.emit({"Target": "dr"}, {"Applied": 100, "Parked": 1}, {"LagMs": [200.0] * 100})
    progress.poll(now=1013.0)
    # the pause has left the window; the run's figures keep it
    assert progress.percentiles() == (200.0, 200.0)
    run = progress.run_percentiles()
    assert run is not None and run[1] == 4000.0
    assert progress.applied == {"dr": 250, "lite": 0} and progress.parked["dr"] == 1
    progress.poll(now=1030.0)
    assert progress.percentiles() is None
    assert "lag (last 10 s) -" in progress.line(5)


def test_behind_counts_the_changes_a_target_has_not_settled(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    emf = Clocked(path)
    progress = Progress(path, ["dr", "lite"])
    emf.emit({"Target": "dr"}, {"Applied": 5, "StaleSkipped": 1, "Duplicates": 1, "Coalesced": 2, "Parked": 1,
                                "Retries": 4}, {"LagMs": [1.0] * 5})
    emf.emit({"Target": "lite"}, {"Applied": 3})
    emf.emit({"Shard": "shardId-0"}, {"Records": 10}, {"MillisBehindLatest": [900.0]})
    progress.poll(now=1.0)
    line = progress.line(12, changes=11, holders=1, workers=2)
    assert "behind: dr=1  lite=8" in line and "leases held by 1 of 2 workers" in line
    assert "of 1 worker" in progress.line(9, holders=1, workers=1)
    assert "behind" not in progress.line(9)


def test_plural() -> None:
    assert [plural(n, "worker") for n in (0, 1, 2)] == ["0 workers", "1 worker", "2 workers"]
