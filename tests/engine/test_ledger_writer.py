"""LedgerWriter (exact mode) against in-process moto: fencing, cancellation splitting, chunking, bisection."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from kcl_app.adapters.ledger import MAX_PAIRS, LedgerWriter, ensure_ledger
from kcl_app.adapters.retry import Backoff
from kcl_app.core.attrs import Item, key_id
from kcl_app.core.plan import Write
from kcl_app.core.records import Change
from kcl_app.core.versions import Version
from tests.support.tables import create_table, scan_all

FAR = 10**9  # a deadline no test reaches


def write(pk: str, micros: int, attrs: dict[str, Any] | None = None, *, delete: bool = False) -> Write:
    key: Item = {"pk": {"S": pk}}
    item = None if delete else {**key, **(attrs or {})}
    version = Version(micros, f"e-{pk}-{micros}")
    change = Change("src", "REMOVE" if delete else "MODIFY", key, key_id(key), item, version, False, version.tiebreak)
    return Write("t", key, key_id(key), version, item, change, (0,))


class Recording:
    """A DynamoDB client that records TransactWriteItems calls and can fail chosen ones.

    `faults` is a list consumed one per call: None lets the call through, a ClientError is raised."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[list[dict[str, Any]]] = []
        self.faults: list[ClientError | None] = []

    def transact_write_items(self, TransactItems: list[dict[str, Any]]) -> Any:  # noqa: N803
        self.calls.append(TransactItems)
        fault = self.faults.pop(0) if self.faults else None
        if fault is not None:
            raise fault
        return self.client.transact_write_items(TransactItems=TransactItems)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def client_error(code: str, message: str = "", reasons: list[dict[str, Any]] | None = None) -> ClientError:
    response: dict[str, Any] = {"Error": {"Code": code, "Message": message},
                                "ResponseMetadata": {"HTTPStatusCode": 400}}
    if reasons is not None:
        response["CancellationReasons"] = reasons
    return ClientError(response, "TransactWriteItems")


@pytest.fixture
def env(moto, clock) -> Iterator[tuple[LedgerWriter, Recording, Any]]:
    client = boto3.client("dynamodb", region_name="eu-west-1")
    suffix = uuid.uuid4().hex[:8]
    table, ledger = f"target-{suffix}", f"ledger-{suffix}"
    create_table(client, table)
    assert ensure_ledger(client, ledger) is True
    assert ensure_ledger(client, ledger) is False  # idempotent
    recording = Recording(client)
    writer = LedgerWriter("t", recording, table, ledger, clock, backoff=Backoff(rng=random.Random(7)),
                          tombstone_ttl_seconds=3600)
    yield writer, recording, client
    writer.close()


def items(client: Any, table: str) -> dict[str, Item]:
    return {item["pk"]["S"]: item for item in scan_all(client, table).values()}


def ledger_rows(client: Any, table: str) -> dict[str, Item]:
    rows = client.scan(TableName=table, ConsistentRead=True)["Items"]
    return {row["k"]["S"]: row for row in rows}


def test_puts_and_deletes_are_applied_with_ledger_rows_and_tombstones(env, clock) -> None:
    writer, recording, client = env
    result = writer.apply([write("a", 10, {"x": {"N": "1"}}), write("b", 11)], FAR)
    assert [w.key["pk"]["S"] for w in result.applied] == ["a", "b"]
    result = writer.apply([write("b", 12, delete=True)], FAR)
    assert len(result.applied) == 1
    assert items(client, writer.table) == {"a": {"pk": {"S": "a"}, "x": {"N": "1"}}}
    rows = ledger_rows(client, writer.ledger_table)
    assert rows[key_id({"pk": {"S": "a"}})]["v"]["S"] == Version(10, "e-a-10").token()
    assert rows[key_id({"pk": {"S": "a"}})]["d"] == {"BOOL": False}
    tomb = rows[key_id({"pk": {"S": "b"}})]
    assert tomb["d"] == {"BOOL": True} and tomb["v"]["S"] == Version(12, "e-b-12").token()
    assert tomb["exp"] == {"N": str(int(clock.now() + 3600))}
    assert "exp" not in rows[key_id({"pk": {"S": "a"}})]
    assert len(recording.calls) == 2 and len(recording.calls[0]) == 4


def test_a_cancelled_transaction_is_split_by_its_reasons(env) -> None:
    writer, recording, client = env
    writer.apply([write("stale", 50, {"n": {"S": "newer"}}), write("dup", 20, {"n": {"S": "same"}})], FAR)
    recording.calls.clear()
    batch = [write("stale", 40, {"n": {"S": "older"}}), write("dup", 20, {"n": {"S": "same"}}),
             write("fresh", 30, {"n": {"S": "new"}})]
    result = writer.apply(batch, FAR)
    assert [w.key["pk"]["S"] for w in result.stale] == ["stale"]
    assert [w.key["pk"]["S"] for w in result.duplicate] == ["dup"]
    assert [w.key["pk"]["S"] for w in result.applied] == ["fresh"]
    assert result.failed == [] and result.retries == 0
    # one cancelled transaction of 3 pairs, then the retry with only the survivor, without a pause
    assert [len(call) for call in recording.calls] == [6, 2]
    assert items(client, writer.table) == {
        "stale": {"pk": {"S": "stale"}, "n": {"S": "newer"}},
        "dup": {"pk": {"S": "dup"}, "n": {"S": "same"}},
        "fresh": {"pk": {"S": "fresh"}, "n": {"S": "new"}},
    }


def test_a_stale_put_cannot_resurrect_a_deleted_item(env) -> None:
    writer, _, client = env
    writer.apply([write("k", 1, {"x": {"S": "v1"}})], FAR)
    writer.apply([write("k", 3, delete=True)], FAR)
    result = writer.apply([write("k", 2, {"x": {"S": "v2"}})], FAR)
    assert len(result.stale) == 1
    assert items(client, writer.table) == {}


def test_a_stale_delete_cannot_remove_a_newer_item(env) -> None:
    writer, _, client = env
    writer.apply([write("k", 5, {"x": {"S": "v5"}})], FAR)
    result = writer.apply([write("k", 4, delete=True)], FAR)
    assert len(result.stale) == 1
    assert items(client, writer.table) == {"k": {"pk": {"S": "k"}, "x": {"S": "v5"}}}


def test_more_than_50_writes_go_out_in_several_transactions(env) -> None:
    writer, recording, client = env
    batch = [write(f"k{i:03d}", 100 + i, {"i": {"N": str(i)}}) for i in range(2 * MAX_PAIRS + 20)]
    result = writer.apply(batch, FAR)
    assert len(result.applied) == len(batch) and result.failed == []
    assert sorted(len(call) for call in recording.calls) == [40, 100, 100]
    assert len(items(client, writer.table)) == len(batch)
    assert len(ledger_rows(client, writer.ledger_table)) == len(batch)


def test_a_whole_request_validation_error_is_bisected_to_the_offending_write(env) -> None:
    writer, recording, client = env
    batch = [write(f"k{i}", 10 + i) for i in range(8)]
    bad = write("k5", 15, {"blob": {"B": b"\0" * 500_000}})
    batch[5] = bad
    result = writer.apply(batch, FAR)
    assert [w for w, _ in result.failed] == [bad]
    (reason,) = [why for _, why in result.failed]
    assert reason.startswith("ValidationException: Item size has exceeded")
    assert sorted(w.key["pk"]["S"] for w in result.applied) == [f"k{i}" for i in range(8) if i != 5]
    assert set(items(client, writer.table)) == {f"k{i}" for i in range(8) if i != 5}
    assert key_id({"pk": {"S": "k5"}}) not in ledger_rows(client, writer.ledger_table)
    # 8 -> 4+4 -> the clean half at once, the other 2+2 -> 1+1
    assert len(recording.calls) == 1 + 2 + 2 + 2


def test_throttled_cancellation_reasons_are_retried_after_a_pause(env, clock) -> None:
    writer, recording, client = env
    reasons = [{"Code": "None"}, {"Code": "ThrottlingError"}, {"Code": "None"}, {"Code": "None"}]
    recording.faults = [client_error("TransactionCanceledException", "cancelled", reasons)]
    result = writer.apply([write("a", 1), write("b", 2)], FAR)
    assert len(result.applied) == 2 and result.retries == 1
    assert len(clock.slept) == 1
    assert set(items(client, writer.table)) == {"a", "b"}


def test_a_validation_error_in_the_reasons_fails_only_that_write(env) -> None:
    writer, recording, client = env
    recording.faults = [client_error("TransactionCanceledException", "cancelled",
                                     [{"Code": "None"}, {"Code": "ValidationError", "Message": "bad set"},
                                      {"Code": "None"}, {"Code": "None"}])]
    bad, good = write("bad", 1), write("good", 2)
    result = writer.apply([bad, good], FAR)
    assert result.failed == [(bad, "ValidationError: bad set")]
    assert result.applied == [good]
    assert set(items(client, writer.table)) == {"good"}


def test_a_cancellation_without_reasons_retries_everything(env, clock) -> None:
    writer, recording, client = env
    recording.faults = [client_error("TransactionCanceledException", "cancelled")]
    result = writer.apply([write("a", 1)], FAR)
    assert len(result.applied) == 1 and result.retries == 1 and len(clock.slept) == 1
    assert set(items(client, writer.table)) == {"a"}


def test_the_budget_ends_retries_and_reports_the_last_error(env, clock) -> None:
    writer, recording, client = env
    recording.faults = [client_error("ThrottlingException", "Rate of requests exceeds the allowed throughput")] * 10_000
    deadline = clock.monotonic() + 20.0
    batch = [write("a", 1), write("b", 2)]
    result = writer.apply(batch, deadline)
    assert result.applied == []
    assert [w for w, _ in result.failed] == batch
    for _, why in result.failed:
        assert why == ("retry budget spent; last error ThrottlingException: "
                       "Rate of requests exceeds the allowed throughput")
    assert clock.monotonic() <= deadline
    assert result.retries == len(clock.slept) >= 3
    assert items(client, writer.table) == {}


def test_a_write_that_raises_is_isolated_and_fails_alone(env, clock) -> None:
    writer, recording, client = env
    writes = [write(f"k{i}", 100 + i, {"n": {"N": str(i)}}) for i in range(10)]
    writes[4] = write("k4", 104, {"n": {"N": 7}})  # malformed: the client refuses to build the request
    result = writer.apply(writes, FAR)
    assert sorted(w.key["pk"]["S"] for w in result.applied) == sorted(f"k{i}" for i in range(10) if i != 4)
    assert [(w.key["pk"]["S"], why.split(":")[0]) for w, why in result.failed] == [("k4", "ParamValidationError")]
    assert set(items(client, writer.table)) == {f"k{i}" for i in range(10) if i != 4}
    assert result.retries == 0 and clock.slept == []  # refused for good: split, never retried


def test_no_chunk_is_started_after_the_deadline(env, clock) -> None:
    writer, recording, client = env
    result = writer.apply([write("k1", 1), write("k2", 2)], clock.monotonic())
    assert recording.calls == [] and len(result.failed) == 2
    assert "before the write was sent" in result.failed[0][1]


def test_the_guards_of_the_fence(env, clock) -> None:
    from kcl_app.core.fence import NEVER_SEEN, StillAt

    writer, recording, client = env
    assert len(writer.apply([write("k1", 50, {"n": {"N": "1"}})], FAR).applied) == 1
    # never seen: a key with a ledger row is skipped (stale), a fresh one lands
    result = writer.apply([write("k1", 0, {"n": {"N": "0"}}), write("k2", 0, {"n": {"N": "0"}})], FAR, NEVER_SEEN)
    assert [w.key_id for w in result.stale] == [key_id({"pk": {"S": "k1"}})] and len(result.applied) == 1
    assert writer.seen({"pk": {"S": "k1"}}, key_id({"pk": {"S": "k1"}}), FAR) == (True, Version(50, "e-k1-50"))
    assert writer.seen({"pk": {"S": "k9"}}, key_id({"pk": {"S": "k9"}}), FAR) == (False, None)
    # still at: only when the row still holds the version read before
    moved = writer.apply([write("k1", 60, {"n": {"N": "2"}})], FAR, StillAt(Version(40, "e-k1-40")))
    assert len(moved.stale) == 1 and len(moved.duplicate) == 0
    held = writer.apply([write("k1", 60, {"n": {"N": "3"}})], FAR, StillAt(Version(50, "e-k1-50")))
    assert len(held.applied) == 1
    assert items(client, writer.table)["k1"]["n"] == {"N": "3"}
    assert len(writer.apply([write("k3", 1, {"n": {"N": "1"}})], FAR, StillAt(None)).applied) == 1


class Chaotic:
    """A client whose every TransactWriteItems call ends at random: success, a cancellation with a
    random reason per action, a refused request, throttling, a connection error or a local exception.
    Stores what succeeds, so the outcome can be checked against it."""

    REASONS = ["None", "ConditionalCheckFailed", "ValidationError", "ItemCollectionSizeLimitExceeded",
               "TransactionConflict", "ThrottlingError"]

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.stored: set[str] = set()
        self.calls = 0

    def transact_write_items(self, TransactItems: list[dict[str, Any]]) -> Any:  # noqa: N803
        from botocore.exceptions import EndpointConnectionError

        self.calls += 1
        roll = self.rng.random()
        if roll < 0.3:
            self.stored |= {a["Put"]["Item"]["k"]["S"] for a in TransactItems[::2]}
            return {}
        if roll < 0.7:
            reasons = [{"Code": self.rng.choice(self.REASONS)} for _ in TransactItems]
            if all(r["Code"] == "None" for r in reasons):
                reasons[0]["Code"] = "TransactionConflict"
            raise client_error("TransactionCanceledException", "cancelled", reasons)
        if roll < 0.8:
            raise client_error("ValidationException", "refused")
        if roll < 0.9:
            raise client_error("ThrottlingException", "slow down")
        if roll < 0.95:
            raise EndpointConnectionError(endpoint_url="https://dynamodb.example")
        raise TypeError("a local failure")


@pytest.mark.parametrize("seed", range(40))
def test_every_write_ends_in_exactly_one_outcome(seed: int, clock) -> None:
    client = Chaotic(random.Random(seed))
    writer = LedgerWriter("t", client, "target", "ledger", clock, backoff=Backoff(rng=random.Random(seed)))
    writes = [write(f"k{i}", 10 + i, {"n": {"N": str(i)}}) for i in range(random.Random(seed).randint(1, 130))]
    result = writer.apply(writes, clock.monotonic() + 30.0)
    outcomes = ([w.key_id for w in result.applied] + [w.key_id for w in result.stale]
                + [w.key_id for w in result.duplicate] + [w.key_id for w, _ in result.failed])
    assert sorted(outcomes) == sorted(w.key_id for w in writes)  # each write exactly once
    assert {w.key_id for w in result.applied} <= client.stored  # applied only if a call carrying it succeeded
    assert all(why for _, why in result.failed)
    writer.close()
