"""Versions: microsecond normalisation, precision inference, ordering and the tie-break."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcl_app.core.versions import Version, newer, to_micros

MS = 1_795_706_486_078  # 2026 in milliseconds
US = 1_795_706_486_110_153  # 2026 in microseconds


def test_milliseconds_are_inferred_and_scaled() -> None:
    assert to_micros(MS) == MS * 1000


def test_microseconds_are_inferred_and_kept() -> None:
    assert to_micros(US) == US


def test_the_inference_boundary() -> None:
    assert to_micros(10**14) == 10**14  # smallest value read as microseconds (1973)
    assert to_micros(10**14 - 1) == (10**14 - 1) * 1000  # read as milliseconds (year 5138)
    assert to_micros(10**13 - 1) == (10**13 - 1) * 1000  # 2286 in milliseconds


def test_stream_seconds_with_a_fraction_are_scaled() -> None:
    assert to_micros(1_795_706_486.110153) == 1_795_706_486_110_153


@pytest.mark.parametrize(
    ("value", "precision", "expected"),
    [
        (MS, "MILLISECOND", MS * 1000),
        (US, "MICROSECOND", US),
        (10**14, "MILLISECOND", 10**17),  # forced: no inference
        (MS, "MICROSECOND", MS),
        (12.9, "MILLISECOND", 12_000),
    ],
)
def test_a_forced_precision_overrides_the_inference(value, precision, expected) -> None:
    assert to_micros(value, precision) == expected


@pytest.mark.parametrize("value", [None, "1795706486078", True, [1], -1])
def test_bad_timestamps_raise_value_error(value) -> None:
    with pytest.raises(ValueError, match="ApproximateCreationDateTime"):
        to_micros(value)


def test_a_millisecond_and_a_microsecond_record_of_the_same_instant_compare_correctly() -> None:
    assert Version(to_micros(MS), "z") < Version(to_micros(MS * 1000 + 1), "a")


def test_versions_order_by_time_then_by_event_id() -> None:
    assert Version(1, "b") < Version(2, "a")
    assert Version(1, "a") < Version(1, "b")
    assert Version(1, "a") == Version(1, "a")
    assert len({Version(1, "a"), Version(1, "a")}) == 1


@given(st.lists(st.tuples(st.integers(0, 10**17), st.uuids().map(str)), min_size=1, max_size=20),
       st.randoms())
def test_every_target_picks_the_same_winner_whatever_the_arrival_order(pairs, rnd) -> None:
    versions = [Version(m, e) for m, e in pairs]
    shuffled = list(versions)
    rnd.shuffle(shuffled)
    winner = None
    for v in shuffled:
        if newer(v, winner):
            winner = v
    assert winner == max(versions)


@given(st.integers(0, 10**19), st.text(max_size=40), st.integers(0, 10**19), st.text(max_size=40))
def test_token_order_is_version_order(m1, t1, m2, t2) -> None:
    a, b = Version(m1, t1), Version(m2, t2)
    assert Version.from_token(a.token()) == a
    assert (a < b) == (a.token() < b.token())


def test_newer_is_idempotent_for_an_equal_version() -> None:
    v = Version(5, "e")
    assert newer(v, None)
    assert not newer(v, v)
    assert not newer(Version(4, "z"), v)
    assert newer(Version(5, "f"), v)
