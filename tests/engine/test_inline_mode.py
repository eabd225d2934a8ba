"""Inline mode through the pipeline: convergence without deletes, and its documented weakness around deletes.

The weakness, as the inline module docstring states it: a put that is older than an applied delete and
arrives after it re-creates the item with its old content, until a newer change of that key arrives.
The same delivery through exact mode (ledger tombstones) does not re-create it: the weakness is of the
mode, not of the test.
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
from kcl_app.adapters.inline import InlineWriter
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


def inline_pipeline(clock: Any) -> tuple[Pipeline, Any, str]:
    client = boto3.client("dynamodb", region_name="eu-west-2")
    table = f"inline-{uuid.uuid4().hex[:8]}"
    create_table(client, table)
    writer = InlineWriter("t", client, table, clock, VERSION_ATTR, backoff=Backoff(rng=random.Random(1)),
                          max_concurrency=4)
    sink = DirectoryDeadLetters(tempfile.mkdtemp(prefix="ts-inline-dl-"))
    return Pipeline([TargetRule("t", "src")], {"t": writer}, sink, RecordingMetrics(), clock), client, table


def exact_pipeline(clock: Any) -> tuple[Pipeline, Any, str]:
    target = ledger_targets(clock, regions={"t": "eu-west-2"}, table="exact-{suffix}",
                            ledger="exact-ledger-{suffix}")["t"]
    sink = DirectoryDeadLetters(tempfile.mkdtemp(prefix="ts-exact-dl-"))
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
def test_the_documented_weakness_a_stale_put_after_a_newer_delete_recreates_the_item(clock) -> None:
    pipeline, client, table = inline_pipeline(clock)
    try:
        sim, (put_old, _) = deliver_put_after_newer_delete(pipeline)
        # the target now differs from the source: the item is back with its old content and old version
        (item,) = scan_all(client, table).values()
        assert item == {"pk": {"S": "k"}, "x": {"S": "old"}, VERSION_ATTR: {"S": decode(put_old).version.token()}}
        # ... until a newer change of that key arrives
        sim.put({"pk": {"S": "k"}, "x": {"S": "newest"}})
        pipeline.process([records(sim)[-1]])
        assert target_items(client, table) == normalise_all(sim.items)
    finally:
        pipeline.close()


@pytest.mark.usefixtures("moto")
def test_exact_mode_does_not_have_that_weakness(clock) -> None:
    pipeline, client, table = exact_pipeline(clock)
    try:
        deliver_put_after_newer_delete(pipeline)
        assert scan_all(client, table) == {}
    finally:
        pipeline.close()


class ChaoticInline:
    """A client whose every PutItem/DeleteItem ends at random: success, a failed condition (with the
    item carrying a random older, equal or newer version), refused, throttled, a connection error or a
    local exception. Records which writes succeeded."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.stored: set[str] = set()

    def _call(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError, EndpointConnectionError

        key = (kwargs.get("Item") or kwargs.get("Key") or {})["pk"]["S"]
        roll = self.rng.random()
        status = {"ResponseMetadata": {"HTTPStatusCode": 400}}
        if roll < 0.3:
            self.stored.add(key)
            return {}
        if roll < 0.5:
            mine = kwargs["ExpressionAttributeValues"][":va"]["S"]
            seen = self.rng.choice([mine, "99999999999999999999#z"])
            raise ClientError({"Error": {"Code": "ConditionalCheckFailedException"},
                               "Item": {VERSION_ATTR: {"S": seen}}, **status}, "PutItem")
        if roll < 0.6:
            raise ClientError({"Error": {"Code": "ValidationException", "Message": "no"}, **status}, "PutItem")
        if roll < 0.8:
            raise ClientError({"Error": {"Code": "ThrottlingException"}, **status}, "PutItem")
        if roll < 0.9:
            raise EndpointConnectionError(endpoint_url="https://dynamodb.example")
        raise RecursionError("maximum recursion depth exceeded")

    put_item = delete_item = _call


@pytest.mark.parametrize("seed", range(20))
def test_every_inline_write_ends_in_exactly_one_outcome(seed: int, clock) -> None:
    from kcl_app.core.attrs import key_id
    from kcl_app.core.plan import Write
    from kcl_app.core.records import Change
    from kcl_app.core.versions import Version

    rng = random.Random(seed)
    client = ChaoticInline(rng)
    writer = InlineWriter("t", client, "copy", clock, VERSION_ATTR, backoff=Backoff(rng=random.Random(seed)))
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
