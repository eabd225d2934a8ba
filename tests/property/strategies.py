"""Hypothesis strategies: DynamoDB attribute values of every type, and source operations."""

from __future__ import annotations

from hypothesis import strategies as st

KEYS = ["a", "b", "c"]

numbers = st.one_of(
    st.integers(min_value=-(10**38) + 1, max_value=10**38 - 1).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-1000, max_value=1000)
    .map(lambda d: format(d.normalize(), "f"))
    .filter(lambda s: s not in ("-0", "0.000") and not s.startswith("-0.0") and "." not in s.rstrip("0")[-1:]),
)
texts = st.text(min_size=0, max_size=8)
blobs = st.binary(min_size=0, max_size=12)

scalars = st.one_of(
    texts.map(lambda s: {"S": s}),
    numbers.map(lambda n: {"N": n}),
    blobs.map(lambda b: {"B": b}),
    st.booleans().map(lambda b: {"BOOL": b}),
    st.just({"NULL": True}),
    st.lists(st.text(min_size=0, max_size=5), min_size=1, max_size=4, unique=True).map(lambda v: {"SS": v}),
    st.lists(st.integers(-999, 999).map(str), min_size=1, max_size=4, unique=True).map(lambda v: {"NS": v}),
    st.lists(st.binary(min_size=0, max_size=5), min_size=1, max_size=3, unique=True).map(lambda v: {"BS": v}),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda v: {"L": v}),
        st.dictionaries(st.text(min_size=1, max_size=4), inner, max_size=3).map(lambda v: {"M": v}),
    ),
    max_leaves=6,
)
attr_names = st.sampled_from(["x", "y", "z", "payload", "tags"])
attributes = st.dictionaries(attr_names, values, max_size=3)

put_op = st.tuples(st.just("put"), st.sampled_from(KEYS), attributes)
delete_op = st.tuples(st.just("delete"), st.sampled_from(KEYS), st.just({}))
operations = st.lists(st.one_of(put_op, put_op, delete_op), min_size=1, max_size=20)


@st.composite
def deliveries(draw: st.DrawFn, n: int) -> list[tuple[int, list[int], bool]]:
    """An adversarial delivery of n records: a list of (shard, batch of record indexes, fail_target_a).

    Covers every record at least once, in any order, with duplicates, replays of ranges, crash
    redeliveries (a batch delivered again) and batches during which target `a` is down."""
    order = draw(st.permutations(range(n)))
    extra = draw(st.lists(st.integers(0, n - 1), max_size=n))  # duplicates / replays anywhere
    stream = list(order) + extra
    if draw(st.booleans()) and n > 1:  # a replay of an arbitrary contiguous range, late
        lo = draw(st.integers(0, n - 1))
        hi = draw(st.integers(lo, n - 1))
        stream += list(range(lo, hi + 1))
    stream = draw(st.permutations(stream))
    batches: list[tuple[int, list[int], bool]] = []
    i = 0
    while i < len(stream):
        size = draw(st.integers(1, 6))
        batch = stream[i : i + size]
        shard = draw(st.integers(0, 1))
        down = draw(st.integers(0, 4)) == 0
        batches.append((shard, batch, down))
        if draw(st.integers(0, 5)) == 0:  # crash before checkpoint: the same batch again
            batches.append((shard, batch, False))
        i += size
    return batches
