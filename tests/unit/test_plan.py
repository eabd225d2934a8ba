"""Planning a batch: coalescing per (target, key), shaping per target, rejections, safe checkpoint."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcl_app.core.attrs import MAX_ITEM_BYTES, Item, key_id
from kcl_app.core.plan import Rejected, TargetRule, Write, plan_batch, records_of, safe_checkpoint
from kcl_app.core.records import Change
from kcl_app.core.versions import Version


def change(pk: str, micros: int, attrs: dict[str, Any] | None = None, *, delete: bool = False,
           ttl: bool = False, table: str = "src", eid: str | None = None) -> Change:
    key: Item = {"pk": {"S": pk}}
    image = None if delete else {**key, **(attrs or {})}
    return Change(
        table=table,
        event="REMOVE" if delete else "MODIFY",
        key=key,
        key_id=key_id(key),
        new_image=image,
        version=Version(micros, eid or f"e{micros}"),
        ttl_delete=ttl,
        event_id=eid or f"e{micros}",
    )


def indexed(*changes: Change) -> list[tuple[int, Change]]:
    return list(enumerate(changes))


def accounted(plan) -> list[int]:
    """Every record index the plan covers, with multiplicity."""
    out = [i for w in plan.writes for i in w.records] + [i for r in plan.rejected for i in r.records]
    return sorted(out)


def test_newest_version_wins_and_every_index_is_accounted() -> None:
    batch = indexed(change("a", 30, {"x": {"N": "3"}}), change("a", 10, {"x": {"N": "1"}}),
                    change("b", 5), change("a", 20, {"x": {"N": "2"}}))
    plans = plan_batch(batch, [TargetRule("t", "src")])
    plan = plans["t"]
    assert plan.coalesced == 2
    by_key = {w.key["pk"]["S"]: w for w in plan.writes}
    assert by_key["a"].version == Version(30, "e30")
    assert by_key["a"].item == {"pk": {"S": "a"}, "x": {"N": "3"}}
    assert sorted(by_key["a"].records) == [0, 1, 3]
    assert by_key["b"].records == (2,)
    assert accounted(plan) == [0, 1, 2, 3]


@given(st.permutations(range(6)))
def test_the_winner_does_not_depend_on_the_order(order) -> None:
    changes = [change("k", 100 + (i % 3), {"i": {"N": str(i)}}, eid=f"id{i}", delete=(i == 4)) for i in range(6)]
    expected = max(changes, key=lambda c: c.version)
    plan = plan_batch([(i, changes[i]) for i in order], [TargetRule("t", "src")])["t"]
    (write,) = plan.writes
    assert write.version == expected.version
    assert write.item == expected.new_image
    assert sorted(write.records) == list(range(6))


def test_equal_timestamps_are_settled_by_the_event_id() -> None:
    first, second = change("k", 7, {"v": {"S": "A"}}, eid="aaa"), change("k", 7, {"v": {"S": "B"}}, eid="bbb")
    for batch in ([(0, first), (1, second)], [(0, second), (1, first)]):
        (write,) = plan_batch(batch, [TargetRule("t", "src")])["t"].writes
        assert write.item == {"pk": {"S": "k"}, "v": {"S": "B"}}


def test_a_delete_is_a_write_without_item() -> None:
    (write,) = plan_batch(indexed(change("a", 1), change("a", 2, delete=True)), [TargetRule("t", "src")])["t"].writes
    assert write.is_delete and write.item is None
    assert write.version == Version(2, "e2")


def test_each_target_gets_only_its_source_table() -> None:
    rules = [TargetRule("one", "src"), TargetRule("two", "other")]
    plans = plan_batch(indexed(change("a", 1), change("b", 2, table="other"), change("c", 3, table="nobody")), rules)
    assert [w.key["pk"]["S"] for w in plans["one"].writes] == ["a"]
    assert [w.key["pk"]["S"] for w in plans["two"].writes] == ["b"]


def test_coalescing_is_per_target() -> None:
    rules = [TargetRule("one", "src"), TargetRule("two", "src", exclude=("x",))]
    plans = plan_batch(indexed(change("a", 1, {"x": {"S": "1"}}), change("a", 2, {"x": {"S": "2"}})), rules)
    assert plans["one"].writes[0].item == {"pk": {"S": "a"}, "x": {"S": "2"}}
    assert plans["two"].writes[0].item == {"pk": {"S": "a"}}
    assert plans["one"].coalesced == plans["two"].coalesced == 1
    assert plans["one"].writes[0].target == "one" and plans["two"].writes[0].target == "two"


def test_ttl_deletes_are_skipped_when_asked_and_counted() -> None:
    batch = indexed(change("a", 1, delete=True, ttl=True), change("b", 2, delete=True))
    plans = plan_batch(batch, [TargetRule("keep", "src", ttl_deletes="skip"), TargetRule("mirror", "src")])
    assert plans["keep"].skipped_ttl == 1
    assert [w.key["pk"]["S"] for w in plans["keep"].writes] == ["b"]
    assert sorted(w.key["pk"]["S"] for w in plans["mirror"].writes) == ["a", "b"]


def test_projection_applies_and_keys_are_never_dropped() -> None:
    rule = TargetRule("t", "src", include=("name",), exclude=("pk",))
    (write,) = plan_batch(indexed(change("a", 1, {"name": {"S": "n"}, "ssn": {"S": "123"}})), [rule])["t"].writes
    assert write.item == {"pk": {"S": "a"}, "name": {"S": "n"}}


def mask(item: Item) -> Item:
    item["email"] = {"S": "***"}
    return item


def test_a_transform_shapes_the_item() -> None:
    rule = TargetRule("t", "src", transform=mask)
    (write,) = plan_batch(indexed(change("a", 1, {"email": {"S": "a@b.c"}})), [rule])["t"].writes
    assert write.item == {"pk": {"S": "a"}, "email": {"S": "***"}}


def test_a_transform_returning_none_deletes_in_the_target() -> None:
    rule = TargetRule("t", "src", transform=lambda item: None if "draft" in item else item)
    plan = plan_batch(indexed(change("a", 1, {"draft": {"BOOL": True}}), change("b", 2)), [rule])["t"]
    by_key = {w.key["pk"]["S"]: w for w in plan.writes}
    assert by_key["a"].is_delete and by_key["a"].version == Version(1, "e1")
    assert by_key["b"].item == {"pk": {"S": "b"}}


def test_a_transform_is_not_called_for_deletes() -> None:
    calls: list[Item] = []
    rule = TargetRule("t", "src", transform=lambda item: calls.append(item) or item)
    (write,) = plan_batch(indexed(change("a", 1, delete=True)), [rule])["t"].writes
    assert write.is_delete and calls == []


@pytest.mark.parametrize(
    ("transform", "reason"),
    [
        (lambda item: {**item, "pk": {"S": "other"}}, "changed or removed key attribute 'pk'"),
        (lambda item: {k: v for k, v in item.items() if k != "pk"}, "changed or removed key attribute 'pk'"),
        (lambda item: [item], "not an item"),
        (lambda item: 1 / 0, "ZeroDivisionError"),
    ],
)
def test_a_broken_transform_rejects_the_change_with_the_reason(transform, reason) -> None:
    rule = TargetRule("t", "src", transform=transform)
    plan = plan_batch(indexed(change("a", 1), change("a", 2)), [rule])["t"]
    assert plan.writes == []
    (rejected,) = plan.rejected
    assert isinstance(rejected, Rejected)
    assert rejected.reason.startswith("transform failed:")
    assert reason in rejected.reason
    assert sorted(rejected.records) == [0, 1]
    assert rejected.change.version == Version(2, "e2")


def test_a_transform_cannot_change_what_other_targets_receive() -> None:
    def drop_nested_secret(item: Item) -> Item:
        item["profile"]["M"].pop("ssn")
        return item

    profile = {"M": {"ssn": {"S": "123"}, "name": {"S": "n"}}}
    rules = [TargetRule("masked", "src", transform=drop_nested_secret), TargetRule("full", "src")]
    src = change("a", 1, {"profile": profile})
    plans = plan_batch(indexed(src), rules)
    assert plans["masked"].writes[0].item["profile"] == {"M": {"name": {"S": "n"}}}
    assert plans["full"].writes[0].item["profile"] == {"M": {"ssn": {"S": "123"}, "name": {"S": "n"}}}
    assert src.new_image is not None and "ssn" in src.new_image["profile"]["M"]


def test_an_item_over_400_kb_is_rejected_and_the_limit_itself_is_not() -> None:
    # "pk" (2) + "a" (1) + "blob" (4) + the value
    fits = change("a", 1, {"blob": {"S": "x" * (MAX_ITEM_BYTES - 7)}})
    too_big = change("b", 2, {"blob": {"S": "x" * (MAX_ITEM_BYTES - 6)}})
    plan = plan_batch(indexed(fits, too_big), [TargetRule("t", "src")])["t"]
    assert [w.key["pk"]["S"] for w in plan.writes] == ["a"]
    (rejected,) = plan.rejected
    assert rejected.records == (1,)
    assert f"{MAX_ITEM_BYTES + 1} bytes exceeds DynamoDB's 400 KB limit" in rejected.reason


def test_the_size_limit_applies_after_the_transform() -> None:
    grow = TargetRule("grow", "src", transform=lambda item: {**item, "pad": {"B": b"\0" * MAX_ITEM_BYTES}})
    shrink = TargetRule("shrink", "src", exclude=("blob",))
    big = change("a", 1, {"blob": {"S": "x" * MAX_ITEM_BYTES}})
    plans = plan_batch(indexed(change("b", 2), big), [grow, shrink])
    assert len(plans["grow"].rejected) == 2 and plans["grow"].writes == []
    assert len(plans["shrink"].writes) == 2 and plans["shrink"].rejected == []


def test_safe_checkpoint() -> None:
    assert safe_checkpoint(5, []) == 4
    assert safe_checkpoint(5, {3, 1}) == 0
    assert safe_checkpoint(5, {0}) == -1
    assert safe_checkpoint(0, []) == -1


def test_records_of_collects_every_index() -> None:
    c = change("a", 1)
    items = [Write("t", c.key, c.key_id, c.version, c.new_image, c, (0, 4)), Rejected("t", c, "r", (2,))]
    assert records_of(items) == {0, 2, 4}
