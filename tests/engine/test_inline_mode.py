"""Inline mode through the pipeline: convergence with deletes, tombstones and the cost of each path.

A put older than an applied delete that arrives after it is refused by the delete's tombstone (kept in the
target's tombstone table), as exact mode refuses it by its ledger row. An update of an item the target holds
is one conditional PutItem, with no transaction and no tombstone read.
"""

from __future__ import annotations

import random
import tempfile
import uuid
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kcl_app.adapters.dead_letters import DirectoryDeadLetters
from kcl_app.adapters.inline import InlineWriter, ensure_tombstones
from kcl_app.adapters.metrics import RecordingMetrics
from kcl_app.adapters.retry import Backoff
from kcl_app.core.attrs import Item
from kcl_app.core.plan import TargetRule
from kcl_app.core.records import RawRecord, decode
from kcl_app.core.versions import Version
from kcl_app.pipeline import Pipeline
from tests.property.strategies import attributes
from tests.support.harness import ledger_targets
from tests.support.source_sim import SourceSim
from tests.support.tables import create_table, normalise_all, scan_all

VERSION_ATTR = "_v"

# every dead-letter folder of this module lives here, removed when the run ends
_SCRATCH = tempfile.TemporaryDirectory(prefix="ts-test-")


class Calls:
    """A DynamoDB client that records the name of every write call it forwards to the real (moto) client."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if name not in ("put_item", "delete_item", "transact_write_items"):
            return method

        def recorded(**kwargs: Any) -> Any:
            self.calls.append(name)
            return method(**kwargs)
        return recorded


def inline_pipeline(clock: Any, record: bool = False) -> tuple[Pipeline, Any, str]:
    client = boto3.client("dynamodb", region_name="eu-west-2")
    table = f"inline-{uuid.uuid4().hex[:8]}"
    create_table(client, table)
    ensure_tombstones(client, f"{table}.tombstones")
    writes = Calls(client) if record else client
    writer = InlineWriter("t", writes, table, clock, VERSION_ATTR, backoff=Backoff(rng=random.Random(1)),
                          max_concurrency=4, tombstone_table=f"{table}.tombstones")
    if record:
        sink = DirectoryDeadLetters(tempfile.mkdtemp(dir=_SCRATCH.name))
        return Pipeline([TargetRule("t", "src")], {"t": writer}, sink, RecordingMetrics(), clock), writes, table
    sink = DirectoryDeadLetters(tempfile.mkdtemp(prefix="ts-inline-dl-", dir=_SCRATCH.name))
    return Pipeline([TargetRule("t", "src")], {"t": writer}, sink, RecordingMetrics(), clock), client, table


def exact_pipeline(clock: Any) -> tuple[Pipeline, Any, str]:
    target = ledger_targets(clock, regions={"t": "eu-west-2"}, table="exact-{suffix}",
                            ledger="exact-ledger-{suffix}")["t"]
    sink = DirectoryDeadLetters(tempfile.mkdtemp(prefix="ts-exact-dl-", dir=_SCRATCH.name))
    pipeline = Pipeline([TargetRule("t", "src")], {"t": target.writer}, sink, RecordingMetrics(), clock)
    return pipeline, target.client, target.table


def records(sim: SourceSim) -> list[RawRecord]:
    return sim.raw_records()


def target_items(client: Any, table: str) -> dict[str, Item]:
    return normalise_all(scan_all(client, table, drop=(VERSION_ATTR,)))


upserts = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), attributes), min_size=1, max_size=15)


@pytest.mark.usefixtures("moto")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(upserts, st.randoms(use_true_random=False), st.integers(1, 5))
def test_inline_converges_for_puts_updates_duplicates_and_reordering(clock, ops, rnd, batch_size) -> None:
    sim = SourceSim("src")
    for pk, attrs in ops:
        sim.put({"pk": {"S": pk}, **attrs})
    raws = records(sim)
    delivery = raws + rnd.choices(raws, k=len(raws))  # every record at least once, some twice
    rnd.shuffle(delivery)
    pipeline, client, table = inline_pipeline(clock)
    try:
        for start in range(0, len(delivery), batch_size):
            assert pipeline.process(delivery[start : start + batch_size]).complete
    finally:
        pipeline.close()
    assert target_items(client, table) == normalise_all(sim.items)


@pytest.mark.usefixtures("moto")
def test_inline_items_carry_the_version_and_count_stale_and_duplicates(clock) -> None:
    sim = SourceSim("src")
    sim.put({"pk": {"S": "k"}, "x": {"S": "1"}})
    sim.put({"pk": {"S": "k"}, "x": {"S": "2"}})
    old, new = records(sim)
    pipeline, client, table = inline_pipeline(clock)
    try:
        first = pipeline.process([new])
        again = pipeline.process([new, old])  # coalesced to `new`, which the target already holds
        late = pipeline.process([old])
    finally:
        pipeline.close()
    assert first.targets["t"].applied == 1
    assert again.targets["t"].duplicate == 1 and again.targets["t"].coalesced == 1
    assert late.targets["t"].stale == 1 and late.targets["t"].applied == 0
    (item,) = scan_all(client, table).values()
    assert item["x"] == {"S": "2"}
    assert Version.from_token(item[VERSION_ATTR]["S"]).micros == sim.clock


@pytest.mark.usefixtures("moto")
def test_a_stale_delete_is_fenced(clock) -> None:
    sim = SourceSim("src")
    sim.put({"pk": {"S": "k"}, "x": {"S": "1"}})
    sim.delete({"pk": {"S": "k"}})
    sim.put({"pk": {"S": "k"}, "x": {"S": "3"}})
    _, delete2, put3 = records(sim)
    pipeline, client, table = inline_pipeline(clock)
    try:
        pipeline.process([put3])
        result = pipeline.process([delete2])
    finally:
        pipeline.close()
    assert result.targets["t"].stale == 1
    assert target_items(client, table) == normalise_all(sim.items)


def deliver_put_after_newer_delete(pipeline: Pipeline) -> tuple[SourceSim, list[RawRecord]]:
    sim = SourceSim("src")
    sim.put({"pk": {"S": "k"}, "x": {"S": "old"}})
    sim.delete({"pk": {"S": "k"}})
    put_old, delete_newer = records(sim)
    pipeline.process([put_old])
    pipeline.process([delete_newer])
    assert sim.items == {}
    late = pipeline.process([put_old])  # a replay / reordered record / late redrive
    assert late.complete
    return sim, [put_old, delete_newer]


@pytest.mark.usefixtures("moto")
def test_a_stale_put_after_a_newer_delete_is_refused_by_the_tombstone(clock) -> None:
    pipeline, client, table = inline_pipeline(clock)
    try:
        sim, (put_old, delete_newer) = deliver_put_after_newer_delete(pipeline)
        assert scan_all(client, table) == {}
        (row,) = scan_all(client, f"{table}.tombstones", key_names=("k",)).values()
        assert row["v"]["S"] == decode(delete_newer).version.token()
        assert row["k"]["S"] == decode(delete_newer).key_id
        assert int(row["exp"]["N"]) == int(clock.now() + 48 * 3600)
        again = pipeline.process([delete_newer, put_old])  # coalesced to the delete: a duplicate
        assert again.targets["t"].duplicate == 1
        # a newer put re-creates the item, over the tombstone
        sim.put({"pk": {"S": "k"}, "x": {"S": "newest"}})
        assert pipeline.process([records(sim)[-1]]).targets["t"].applied == 1
        assert target_items(client, table) == normalise_all(sim.items)
    finally:
        pipeline.close()


@pytest.mark.usefixtures("moto")
def test_a_delete_that_arrives_before_its_put_still_fences_it(clock) -> None:
    sim = SourceSim("src")
    sim.put({"pk": {"S": "k"}, "x": {"S": "1"}})
    sim.delete({"pk": {"S": "k"}})
    put1, delete2 = records(sim)
    pipeline, client, table = inline_pipeline(clock)
    try:
        assert pipeline.process([delete2]).targets["t"].applied == 1  # nothing to delete, a tombstone all the same
        assert pipeline.process([put1]).targets["t"].stale == 1
    finally:
        pipeline.close()
    assert scan_all(client, table) == {}


@pytest.mark.usefixtures("moto")
def test_each_change_takes_its_path_an_update_of_a_held_item_is_one_put(clock) -> None:
    sim = SourceSim("src")
    sim.put({"pk": {"S": "k"}, "x": {"S": "1"}})   # INSERT: create path, one transaction
    sim.put({"pk": {"S": "k"}, "x": {"S": "2"}})   # MODIFY of a held item: one PutItem
    sim.delete({"pk": {"S": "k"}})                 # REMOVE: one transaction
    sim.put({"pk": {"S": "k"}, "x": {"S": "4"}})   # INSERT again, over the tombstone
    pipeline, calls, table = inline_pipeline(clock, record=True)
    try:
        for raw in records(sim):
            assert pipeline.process([raw]).targets["t"].applied == 1
        assert calls.calls == ["transact_write_items", "put_item", "transact_write_items", "transact_write_items"]
        calls.calls.clear()
        # a MODIFY of a key the target does not hold: the update fails (no item), then the create path
        sim.delete({"pk": {"S": "k"}})
        pipeline.process([records(sim)[-1]])
        modify = SourceSim("src", start_micros=sim.clock + 10)
        modify.put({"pk": {"S": "k"}, "x": {"S": "7"}})
        modify.put({"pk": {"S": "k"}, "x": {"S": "8"}})
        calls.calls.clear()
        assert pipeline.process([records(modify)[-1]]).targets["t"].applied == 1
        assert calls.calls == ["put_item", "transact_write_items"]
    finally:
        pipeline.close()
    assert target_items(calls.client, table) == normalise_all({k: v for k, v in modify.items.items()})


@pytest.mark.usefixtures("moto")
def test_exact_mode_does_not_have_that_weakness(clock) -> None:
    pipeline, client, table = exact_pipeline(clock)
    try:
        deliver_put_after_newer_delete(pipeline)
        assert scan_all(client, table) == {}
    finally:
        pipeline.close()


class ChaoticInline:
    """A client whose every PutItem/TransactWriteItems ends at random: success, a failed condition (with the
    item or tombstone carrying this write's version or a newer one), refused, throttled, a connection error
    or a local exception. Records which writes succeeded."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.stored: set[str] = set()

    def _fail(self, kwargs: dict[str, Any]) -> None:
        from botocore.exceptions import ClientError, EndpointConnectionError

        roll = self.rng.random()
        status = {"ResponseMetadata": {"HTTPStatusCode": 400}}
        actions = kwargs.get("TransactItems") or [{"Put": kwargs}]
        if roll < 0.25:
            mine = next(iter(actions[0].values()))["ExpressionAttributeValues"][":v"]["S"]
            seen = self.rng.choice([mine, "99999999999999999999#z"])
            if "TransactItems" not in kwargs:
                raise ClientError({"Error": {"Code": "ConditionalCheckFailedException"},
                                   "Item": {VERSION_ATTR: {"S": seen}}, **status}, "PutItem")
            failing = self.rng.randrange(2)
            reasons = [{"Code": "None"}, {"Code": "None"}]
            reasons[failing] = {"Code": "ConditionalCheckFailed", "Item": {"v": {"S": seen}, VERSION_ATTR: {"S": seen}}}
            raise ClientError({"Error": {"Code": "TransactionCanceledException"}, "CancellationReasons": reasons,
                               **status}, "TransactWriteItems")
        if roll < 0.35:
            raise ClientError({"Error": {"Code": "ValidationException", "Message": "no"}, **status}, "PutItem")
        if roll < 0.45 and "TransactItems" in kwargs:
            reasons = [{"Code": "None"}, {"Code": self.rng.choice(["TransactionConflict", "ValidationError"])}]
            raise ClientError({"Error": {"Code": "TransactionCanceledException"}, "CancellationReasons": reasons,
                               **status}, "TransactWriteItems")
        if roll < 0.6:
            raise ClientError({"Error": {"Code": "ThrottlingException"}, **status}, "PutItem")
        if roll < 0.7:
            raise EndpointConnectionError(endpoint_url="https://dynamodb.example")
        raise RecursionError("maximum recursion depth exceeded")

    def put_item(self, **kwargs: Any) -> Any:
        if self.rng.random() < 0.3:
            self.stored.add(kwargs["Item"]["pk"]["S"])
            return {}
        self._fail(kwargs)

    def transact_write_items(self, **kwargs: Any) -> Any:
        if self.rng.random() < 0.3:
            target = kwargs["TransactItems"][1]
            self.stored.add((target.get("Put") or {}).get("Item", (target.get("Delete") or {}).get("Key"))["pk"]["S"])
            return {}
        self._fail(kwargs)


@pytest.mark.parametrize("seed", range(20))
def test_every_inline_write_ends_in_exactly_one_outcome(seed: int, clock) -> None:
    from kcl_app.core.attrs import key_id
    from kcl_app.core.plan import Write
    from kcl_app.core.records import Change
    from kcl_app.core.versions import Version

    rng = random.Random(seed)
    client = ChaoticInline(rng)
    writer = InlineWriter("t", client, "copy", clock, VERSION_ATTR, backoff=Backoff(rng=random.Random(seed)),
                          tombstone_table="copy.tombstones")
    writes = []
    for i in range(rng.randint(1, 60)):
        key = {"pk": {"S": f"k{i}"}}
        item = None if i % 5 == 0 else {**key, "n": {"N": str(i)}}
        version = Version(10 + i, f"e{i}")
        change = Change("src", "REMOVE" if item is None else "MODIFY", key, key_id(key), item, version, False, "e")
        writes.append(Write("t", key, key_id(key), version, item, change, (i,)))
    result = writer.apply(writes, clock.monotonic() + 30.0)
    outcomes = ([w.key_id for w in result.applied] + [w.key_id for w in result.stale]
                + [w.key_id for w in result.duplicate] + [w.key_id for w, _ in result.failed])
    assert sorted(outcomes) == sorted(w.key_id for w in writes)
    assert {w.key["pk"]["S"] for w in result.applied} <= client.stored
    assert all(why for _, why in result.failed)
    writer.close()
