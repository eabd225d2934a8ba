"""Every fenced write path treats the same error the same way: one classification, one retry loop.

The callers are the stream (pipeline), the backfill, verify's repair, redrive's replay and redrive's
re-read. Each writes one change into a target whose write calls all raise the same error (a fake
around a moto client that counts them). For each error class, every caller must end the change in
the same outcome (failed/parked, with the error named in the reason where the caller keeps one)
after the same number of write calls, under the same budget and the same (deterministic) backoff.
Invalid requests are tried once; transient and unavailable errors until the budget is spent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from kcl_app.adapters.dead_letters import DirectoryDeadLetters
from kcl_app.adapters.inline import ensure_tombstones
from kcl_app.adapters.ledger import ensure_ledger
from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.adapters.retry import classify
from kcl_app.backfill import BackfillState, TargetSpec, backfill
from kcl_app.compose import make_writer
from kcl_app.config import parse
from kcl_app.core.plan import TargetRule
from kcl_app.core.retry import Backoff
from kcl_app.pipeline import Pipeline
from kcl_app.redrive import Reread, redrive
from kcl_app.verify import Verifier
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table

BUDGET = 30.0
ITEM = {"pk": {"S": "k1"}, "n": {"N": "1"}}


def aws(code: str, status: int) -> Callable[[], BaseException]:
    return lambda: ClientError({"Error": {"Code": code, "Message": f"{code} from the fake"},
                                "ResponseMetadata": {"HTTPStatusCode": status}}, "TransactWriteItems")


ERRORS: dict[str, tuple[Callable[[], BaseException], str]] = {
    "validation": (aws("ValidationException", 400), "invalid"),
    "item-collection-size": (aws("ItemCollectionSizeLimitExceededException", 400), "invalid"),
    "throttling": (aws("ThrottlingException", 400), "transient"),
    "resource-not-found": (aws("ResourceNotFoundException", 400), "unavailable"),
    "access-denied": (aws("AccessDeniedException", 400), "unavailable"),
    "5xx": (aws("InternalServerError", 500), "transient"),
    "connection": (lambda: EndpointConnectionError(endpoint_url="https://dynamodb.example"), "transient"),
    "non-aws": (lambda: TypeError("unhashable type: 'dict'"), "invalid"),
}


class Refusing:
    """A DynamoDB client whose write calls all raise `make()`; reads go to the real (moto) client."""

    def __init__(self, client: Any, make: Callable[[], BaseException]) -> None:
        self.client = client
        self.make = make
        self.writes = 0

    def _refuse(self, **_kwargs: Any) -> Any:
        self.writes += 1
        raise self.make()

    transact_write_items = put_item = delete_item = _refuse

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture
def deterministic_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The jitter is the only randomness: replace it with half the full-jitter range, for every loop."""
    monkeypatch.setattr(Backoff, "delay", lambda self, attempt: min(self.cap, self.base * 2 ** min(attempt, 30)) / 2)


class World:
    """Fresh tables for one caller (`n` names them): a source holding ITEM, a target, its ledger and
    its tombstone table (the fence of exact and of inline mode)."""

    def __init__(self, n: str, mode: str, make: Callable[[], BaseException], clock: Any, tmp_path: Path) -> None:
        self.mode, self.clock, self.tmp = mode, clock, tmp_path
        self.orders, self.copy, self.ledger = f"orders-{n}", f"copy-{n}", f"ledger-{n}"
        self.source = boto3.client("dynamodb", region_name="us-east-1")
        create_table(self.source, self.orders)
        self.source.put_item(TableName=self.orders, Item=ITEM)
        real = boto3.client("dynamodb", region_name="eu-west-1")
        create_table(real, self.copy)
        ensure_ledger(real, self.ledger)
        self.tombstones = f"tombstones-{n}"
        ensure_tombstones(real, self.tombstones)
        self.client = Refusing(real, make)
        self.rule = TargetRule("t", self.orders)
        self.sink = DirectoryDeadLetters(tmp_path / "dead-letters")

    def writer(self) -> Any:
        """The stream's writer, built by the composition root as `tablesync run` builds it."""
        config = parse({"stream_retention_hours": 24,
                        "targets": [{"name": "t", "source_table": self.orders, "table": self.copy,
                                     "region": "eu-west-1", "mode": self.mode, "ledger_table": self.ledger,
                                     "tombstone_table": self.tombstones,
                                     "dead_letter": {"path": str(self.tmp / "unused")}}]})
        return make_writer(config.targets[0], config, self.clock, self.client, prepare=False)

    def spec(self) -> TargetSpec:
        return TargetSpec(self.rule, self.client, self.copy, self.mode,  # type: ignore[arg-type]
                          self.ledger if self.mode == "exact" else None,
                          tombstone_table=self.tombstones if self.mode == "inline" else None)

    def pipeline(self) -> Pipeline:
        return Pipeline([self.rule], {"t": self.writer()}, self.sink, RecordingMetrics(), self.clock,
                        retry_budget_seconds=BUDGET)

    def record(self) -> Any:
        sim = SourceSim(self.orders, start_micros=int((self.clock.now() - 60) * 1e6))
        sim.put(ITEM)
        return sim.raw_records()

    def verifier(self) -> Verifier:
        return Verifier(self.source, self.orders, [self.spec()], self.clock, repair_budget_seconds=BUDGET)

    def reasons(self) -> list[str]:
        return [entry.reason for _, entry in self.sink.read("t")]


def stream(w: World) -> tuple[str, list[str]]:
    result = w.pipeline().process(w.record())
    return ("failed" if result.targets["t"].parked == 1 else "settled"), w.reasons()


def backfill_caller(w: World) -> tuple[str, list[str]]:
    state = BackfillState.open(w.tmp / "state", w.orders, ["t"], 1)
    report = backfill(w.source, w.orders, [w.spec()], state, w.clock, write_budget_seconds=BUDGET)
    return ("failed" if report.failed.get("t") == 1 else "settled"), []


def repair(w: World) -> tuple[str, list[str]]:
    return w.verifier().repair_key(w.spec(), {"pk": ITEM["pk"]}), []


def _park_one(w: World) -> None:
    from kcl_app.ports import DeadLetter

    raw = w.record()[0]
    w.sink.park([DeadLetter("t", "parked earlier", raw.data, raw.sequence_number, raw.shard_id, w.clock.now())])


def redrive_replay(w: World) -> tuple[str, list[str]]:
    _park_one(w)
    report = redrive(w.pipeline(), w.sink, "t")
    reasons = [r for r in w.reasons() if r != "parked earlier"]
    return ("failed" if report.still_failing == 1 else "settled"), reasons


def redrive_reread(w: World) -> tuple[str, list[str]]:
    _park_one(w)
    verifier = w.verifier()
    reread = Reread(lambda key: verifier.repair_key(w.spec(), key), w.clock, max_age_seconds=None)
    report = redrive(w.pipeline(), w.sink, "t", reread=reread)
    return ("failed" if report.still_failing == 1 else "settled"), []


CALLERS = {"stream": stream, "backfill": backfill_caller, "repair": repair,
           "redrive-replay": redrive_replay, "redrive-reread": redrive_reread}


@pytest.mark.parametrize("error", sorted(ERRORS))
def test_the_edge_classifies_each_error_class(error: str) -> None:
    make, kind = ERRORS[error]
    assert classify(make()) == kind


@pytest.mark.parametrize("mode", ["exact", "inline"])
@pytest.mark.parametrize("error", sorted(ERRORS))
def test_every_caller_treats_an_error_the_same_way(error: str, mode: str, moto: None, clock: Any,
                                                   tmp_path: Path, deterministic_backoff: None) -> None:
    make, kind = ERRORS[error]
    seen: dict[str, tuple[str, int]] = {}
    for name, caller in CALLERS.items():
        world = World(name, mode, make, clock, tmp_path / name)
        outcome, reasons = caller(world)
        seen[name] = (outcome, world.client.writes)
        for reason in reasons:  # the last error is named in what is parked
            assert type(make()).__name__ in reason or str(make().response["Error"]["Code"]) in reason, reason
    assert len(set(seen.values())) == 1, seen
    outcome, calls = seen["stream"]
    assert outcome == "failed"
    if kind == "invalid":
        assert calls == 1, seen  # refused for good: never sent again
    else:
        assert calls > 5, seen  # retried until the budget was spent
