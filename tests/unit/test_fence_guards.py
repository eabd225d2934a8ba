"""The fence's guards (kcl_app.core.fence), and the rule that the ledger's conditions have one owner."""

from __future__ import annotations

import re
from pathlib import Path

from kcl_app.core.fence import NEVER_SEEN, NEWER_THAN_SEEN, StillAt, refusal, repair_version
from kcl_app.core.versions import Version

PACKAGE = Path(__file__).resolve().parents[2] / "kcl_app"


def test_a_repair_version_sorts_just_above_what_it_read() -> None:
    seen = Version(1_700_000_000_000_000, "evt-1")
    repaired = repair_version(seen)
    assert seen < repaired < Version(seen.micros + 1, "")
    assert repair_version(None) < Version(1, "")


def test_a_refusal_is_a_duplicate_only_for_the_stream_guard_and_the_same_version() -> None:
    v = Version(5, "a")
    assert refusal(NEWER_THAN_SEEN, v.token(), v) == "duplicate"
    assert refusal(NEWER_THAN_SEEN, Version(6, "a").token(), v) == "stale"
    assert refusal(NEWER_THAN_SEEN, None, v) == "stale"
    assert refusal(NEVER_SEEN, v.token(), v) == "stale"
    assert refusal(StillAt(Version(4, "a")), v.token(), v) == "stale"


def test_the_ledger_attributes_and_conditions_appear_in_one_module_only() -> None:
    from kcl_app.adapters import ledger

    expressions = {ledger.condition(guard, Version(1, "x"))[0]
                   for guard in (NEWER_THAN_SEEN, NEVER_SEEN, StillAt(None), StillAt(Version(1, "x")))}
    assert len(expressions) == 4
    # the ledger row's attribute names, as written in code (`"k"`, `"v"`, `"exp"` ...) and its conditions
    needles = [re.escape(e) for e in expressions] + [r"LEDGER_(KEY|VERSION|DELETED|EXPIRES)\b"]
    owners: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "local" in path.relative_to(PACKAGE).parts:
            continue  # the emulator is not the product
        text = path.read_text(encoding="utf-8")
        for needle in needles:
            if re.search(needle, text):
                owners.setdefault(needle, set()).add(str(path.relative_to(PACKAGE)))
    assert owners and all(found == {"adapters/ledger.py"} for found in owners.values()), owners


def test_the_inline_tombstone_row_is_the_ledger_schema() -> None:
    """The tombstone table is created by `ensure_ledger` and may be a ledger table made by the infra."""
    from kcl_app.adapters import inline, ledger

    assert (inline.TOMBSTONE_KEY, inline.TOMBSTONE_VERSION, inline.TOMBSTONE_EXPIRES) == (
        ledger.LEDGER_KEY, ledger.LEDGER_VERSION, ledger.LEDGER_EXPIRES)


def test_the_inline_conditions_appear_in_one_module_only() -> None:
    from kcl_app.adapters import inline
    from kcl_app.core.attrs import key_id
    from kcl_app.core.plan import Write
    from kcl_app.core.records import Change

    key = {"pk": {"S": "a"}}
    change = Change("src", "INSERT", key, key_id(key), key, Version(1, "x"), False, "x")
    write = Write("t", key, key_id(key), Version(1, "x"), key, change, ())
    parts = ("update", "create-item", "create-tombstone", "delete-item", "delete-tombstone")
    expressions = {inline.condition(guard, write, "_v", part)[0]  # type: ignore[arg-type]
                   for guard in (NEWER_THAN_SEEN, NEVER_SEEN, StillAt(None), StillAt(Version(1, "x")))
                   for part in parts}
    assert len(expressions) == 11
    for expression in expressions:
        found = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if "local" not in p.relative_to(PACKAGE).parts and expression in p.read_text(encoding="utf-8")}
        assert found == {"adapters/inline.py"}, (expression, found)
