"""``tablesync parked``: look at the changes parked in the dead-letter stores, changing nothing.

    tablesync parked list --config targets.toml [--target NAME | --store STORE] [--json] [--show-values] [--limit N]
    tablesync parked show --config targets.toml ENTRY_ID [--target NAME | --store STORE] [--json] [--show-values]

`list` prints one line per parked entry: its entry id, store, event (INSERT / MODIFY / REMOVE),
key, version (when the source made the change), first parked time, attempts and reason. Without
`--target`/`--store` it lists every target's store and the two stream-wide ones (`_poison`:
undecodable records, `_unmapped`: records of tables no target wanted). `show` prints one entry in
full (an entry id prefix of 6 or more hex digits is enough when it is unambiguous).

Item images are personal data, often: they are shown as attribute names and DynamoDB types only,
unless `--show-values` (keys are shown, as `verify` does). An entry that cannot be decoded is shown
with its reason and size; its bytes only with `--show-values`.

`first parked` is when the change was first parked for that store; a redrive that fails again
parks it again with the new reason, keeping that time and counting one more attempt. To replay
them: `tablesync redrive` (and `redrive --dry-run` to see what it would do first).

Exit codes: 0 listed or shown (an empty store too); 1 `show` found no entry of that id (or more
than one for a prefix); 2 could not run (configuration, unknown target, store unreachable).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app.commands import UsageError, add_global_flags, described
from kcl_app.compose import make_dead_letters
from kcl_app.config import Config, load
from kcl_app.core.attrs import item_to_wire
from kcl_app.core.errors import PoisonRecord, ReplicationError
from kcl_app.core.records import RawRecord, decode
from kcl_app.pipeline import POISON_STORE, UNMAPPED_STORE
from kcl_app.ports import DeadLetter, DeadLetterSink

EXIT_OK, EXIT_NOT_FOUND, EXIT_ERROR = 0, 1, 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "parked", help="list and show the changes parked in the dead-letter stores", **described(__doc__))
    actions = parser.add_subparsers(dest="parked_action", metavar="ACTION")
    actions.required = True
    for name, text in (("list", "one line per parked entry"), ("show", "one entry in full")):
        action = actions.add_parser(name, help=text, description=text)
        add_global_flags(action, top_level=False)  # after the action's name too
        action.add_argument("--config", required=True, help="targets.toml")
        which = action.add_mutually_exclusive_group()
        which.add_argument("--target", help="only this target's store")
        which.add_argument("--store", choices=(POISON_STORE, UNMAPPED_STORE), help="only this stream-wide store")
        action.add_argument("--json", action="store_true", help="print JSON")
        action.add_argument("--show-values", action="store_true",
                            help="show attribute values (personal data, often), not only names and types")
        if name == "list":
            action.add_argument("--limit", type=int, default=1000, help="list at most N entries (default 1000)")
        else:
            action.add_argument("entry_id", help="the entry id (from `parked list`), or an unambiguous prefix")
    return parser


def stores_of(config: Config, args: argparse.Namespace) -> list[str]:
    if args.target:
        config.target(args.target)  # an unknown name is refused with the names that exist
        return [args.target]
    if args.store:
        return [args.store]
    return [t.name for t in config.targets] + [POISON_STORE, UNMAPPED_STORE]


def entries(sink: DeadLetterSink, store: str) -> Iterator[DeadLetter]:
    """The entries of `store`, read without removing anything (handles given back at the end)."""
    handles: list[str] = []
    try:
        for handle, entry in sink.read(store):
            handles.append(handle)
            yield entry
    finally:
        release = getattr(sink, "release", None)
        if callable(release):
            release(store, handles)


def describe(entry: DeadLetter, precision: Any, show_values: bool) -> dict[str, Any]:
    """An entry decoded for people: the record's event, key, version and image (names and types
    only unless `show_values`), with the parking history."""
    doc: dict[str, Any] = {
        "entry_id": entry.entry_id, "store": entry.store, "reason": entry.reason,
        "first_parked_at": _iso(entry.first_parked), "last_parked_at": _iso(entry.parked_at),
        "attempts": entry.attempts, "shard_id": entry.shard_id, "sequence_number": entry.sequence_number,
        "size_bytes": len(entry.data),
    }
    try:
        change = decode(RawRecord(entry.data, entry.sequence_number, shard_id=entry.shard_id), precision)
    except PoisonRecord as exc:
        doc.update(event=None, key=None, version=entry.version or None, changed_at=None, image=None,
                   undecodable=str(exc))
        if show_values:
            doc["data"] = entry.data.decode("utf-8", "backslashreplace")
        return doc
    image = None
    if change.new_image is not None:
        wire = item_to_wire(change.new_image)
        image = wire if show_values else {name: next(iter(value)) for name, value in sorted(wire.items())}
    doc.update(event=change.event, table=change.table, key=item_to_wire(change.key), version=change.version.token(),
               changed_at=_iso(change.version.micros / 1e6), image=image)
    return doc


def _iso(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return str(seconds)


def run(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
        stores = stores_of(config, args)
        sink = make_dead_letters(config)
    except ReplicationError as exc:
        raise UsageError(str(exc)) from exc
    try:
        if args.parked_action == "show":
            return _show(args, config, sink, stores)
        return _list(args, config, sink, stores)
    except (ClientError, BotoCoreError, OSError) as exc:
        print(f"tablesync parked: cannot read the dead-letter store: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _list(args: argparse.Namespace, config: Config, sink: DeadLetterSink, stores: list[str]) -> int:
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for store in stores:
        counts[store] = 0
        for entry in entries(sink, store):
            counts[store] += 1
            if len(rows) < args.limit:
                rows.append(describe(entry, config.precision, args.show_values))
    rows.sort(key=lambda r: (r["first_parked_at"], r["entry_id"]))
    total = sum(counts.values())
    if args.json:
        print(json.dumps({"values_shown": args.show_values, "total": total, "per_store": counts,
                          "listed": len(rows), "entries": rows}, indent=2, sort_keys=True))
        return EXIT_OK
    cols = ["entry_id", "store", "event", "key", "version", "first_parked_at", "attempts", "reason"]
    table = [[_cell(c, row.get(c)) for c in cols] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in table]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    per_store = ", ".join(f"{store} {n}" for store, n in counts.items() if n) or "every store is empty"
    more = f" (listed {len(rows)}: --limit)" if len(rows) < total else ""
    print(f"{total} parked{more}: {per_store}")
    return EXIT_OK


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "key":
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if column == "version":
        return str(value).split("#", 1)[0]
    text = str(value)
    return text if column != "reason" or len(text) <= 80 else text[:77] + "..."


def _show(args: argparse.Namespace, config: Config, sink: DeadLetterSink, stores: list[str]) -> int:
    wanted = args.entry_id.strip().lower()
    if len(wanted) < 6:
        raise UsageError("give at least 6 hex digits of the entry id (see `tablesync parked list`)")
    found = [entry for store in stores for entry in entries(sink, store) if entry.entry_id.startswith(wanted)]
    if not found:
        print(f"tablesync parked: no parked entry {wanted!r} in {', '.join(stores)}", file=sys.stderr)
        return EXIT_NOT_FOUND
    if len({e.entry_id for e in found}) > 1:
        print(f"tablesync parked: {wanted!r} matches {len(found)} entries: give more digits", file=sys.stderr)
        return EXIT_NOT_FOUND
    doc = describe(found[0], config.precision, args.show_values)
    doc["values_shown"] = args.show_values
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return EXIT_OK
    for name in ("entry_id", "store", "event", "table", "key", "version", "changed_at", "first_parked_at",
                 "last_parked_at", "attempts", "reason", "shard_id", "sequence_number", "size_bytes",
                 "undecodable", "image", "data"):
        if name in doc and doc[name] is not None:
            value = doc[name]
            shown = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
            print(f"{name + ':':<17} {shown}")
    if not args.show_values and doc.get("image") is not None:
        print("(attribute values hidden: --show-values shows them)")
    return EXIT_OK


if __name__ == "__main__":
    from kcl_app.commands import standalone

    sys.exit(standalone("parked"))
