"""Dead-letter stores: where a change goes when a target cannot take it. Never lose it.

Two stores behind the DeadLetterSink port:

* `DirectoryDeadLetters` (the embedded default): one JSON file per entry under
  `<root>/<store>/`, written to a temporary name, fsynced, then renamed, so an entry is either
  whole or absent after a crash.
* `SqsDeadLetters` (AWS): one queue per store; SendMessageBatch, and a partial failure
  (`Failed` in the answer) is a failure of the whole park. Entries too large for one message
  are kept in S3 (`S3Payloads`) with a pointer in the message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app.adapters.retry import error_code
from kcl_app.core.errors import ParkFailed
from kcl_app.ports import DeadLetter

log = logging.getLogger("tablesync.dead_letters")


def _safe(store: str) -> str:
    if not store or "/" in store or store.startswith(".."):
        raise ValueError(f"invalid dead-letter store name {store!r}")
    return store


class Unreadable(ValueError):
    """A stored entry that is not a dead letter this product wrote (bad JSON, bad base64, a missing
    field, a field of the wrong type, another store's name): skipped and reported, never applied."""


_TEXT_FIELDS = ("sequence_number", "shard_id", "key_id", "version")


def parse_entry(doc: Any, store: str) -> DeadLetter:
    """A dead letter from its stored JSON document, checked field by field (every stored entry is
    untrusted: a queue or a directory can be written by something else). Raises Unreadable."""
    if not isinstance(doc, dict):
        raise Unreadable(f"the entry is a JSON {type(doc).__name__}, not an object")
    for name in ("store", "reason", "data"):
        if not isinstance(doc.get(name), str):
            raise Unreadable(f"field {name!r} is missing or not a string")
    if doc["store"] != store:
        raise Unreadable(f"the entry names store {doc['store']!r}, not {store!r}")
    for name in _TEXT_FIELDS:
        if not isinstance(doc.get(name, ""), str):
            raise Unreadable(f"field {name!r} is not a string")
    parked_at = doc.get("parked_at", 0.0)
    if isinstance(parked_at, bool) or not isinstance(parked_at, int | float):
        raise Unreadable("field 'parked_at' is not a number")
    # entries written before these fields existed: a first park, at `parked_at`
    first = doc.get("first_parked_at", parked_at)
    if isinstance(first, bool) or not isinstance(first, int | float):
        raise Unreadable("field 'first_parked_at' is not a number")
    attempts = doc.get("attempts", 1)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise Unreadable("field 'attempts' is not a positive integer")
    try:
        data = base64.b64decode(doc["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Unreadable(f"field 'data' is not valid base64 ({exc})") from None
    return DeadLetter(store=store, reason=doc["reason"], data=data, parked_at=float(parked_at),
                      first_parked_at=0.0 if first == parked_at else float(first), attempts=attempts,
                      **{name: doc.get(name, "") for name in _TEXT_FIELDS})


def file_name(entry: DeadLetter) -> str:
    """The directory store's file for an entry: its sequence number, zero-padded so that names sort
    in stream order within a shard, then its entry id (deterministic: a record parked again for the
    same store lands on the same file)."""
    seq = entry.sequence_number
    position = seq.rjust(64, "0") if seq.isdigit() and seq.isascii() and len(seq) <= 64 else "~"
    return f"{position}-{entry.entry_id}.json"


class _UnreadableLog:
    """The entries a read skipped, per store, for the redrive report (`unreadable(store)`)."""

    def __init__(self) -> None:
        self._skipped: dict[str, list[tuple[str, str]]] = {}

    def _skip(self, store: str, handle: str, reason: str) -> None:
        log.error("dead-letter entry %s of store %s is unreadable and was skipped (kept as it is, for an "
                  "operator): %s", handle, store, reason)
        self._skipped.setdefault(store, []).append((handle, reason))

    def unreadable(self, store: str) -> list[tuple[str, str]]:
        """(handle, reason) of each entry the reads of `store` skipped so far; clears the list."""
        return self._skipped.pop(store, [])


class DirectoryDeadLetters(_UnreadableLog):
    """Entries hold whole item images (personal data, often): store folders are 0700 and files
    0600 whatever the umask; a root this store creates is 0700 too.

    One file per entry id (`file_name`): parking a record that is already in the store rewrites its
    file, keeping the first parked time and counting one more attempt. `remove` deletes a file only
    if it is still the one `read` gave (same inode and modification time): an entry re-parked under
    the same name after it was read (a redrive that failed again) stays."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__()
        self.root = Path(root)
        self._private: set[Path] = set()
        self._seen: dict[Path, tuple[int, int]] = {}  # file -> (inode, mtime_ns) when read() gave it

    def _folder(self, store: str) -> Path:
        folder = self.root / _safe(store)
        if folder not in self._private or not folder.is_dir():
            if not self.root.is_dir():
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(self.root, 0o700)
            folder.mkdir(mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask; an older folder may be wider
            self._private.add(folder)
        return folder

    def park(self, entries: Sequence[DeadLetter]) -> None:
        touched: set[Path] = set()
        for entry in entries:
            try:
                folder = self._folder(entry.store)
                name = file_name(entry)
                entry = self._merged(folder / name, entry)
                tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.fchmod(fd, 0o600)
                with open(fd, "w", encoding="utf-8") as fh:
                    json.dump(entry.to_json(), fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, folder / name)
                touched.add(folder)
            except OSError as exc:
                raise ParkFailed(entry.store, f"{type(exc).__name__}: {exc}") from exc
        for folder in touched:
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @staticmethod
    def _merged(path: Path, entry: DeadLetter) -> DeadLetter:
        """`entry` as a further attempt of the entry already at `path`, if there is a readable one."""
        try:
            with open(path, encoding="utf-8") as fh:
                earlier = parse_entry(json.load(fh), entry.store)
        except FileNotFoundError:
            return entry
        except (OSError, UnicodeDecodeError, ValueError, RecursionError, Unreadable):
            return entry  # not a readable entry of ours: the new one takes its place
        if earlier.entry_id != entry.entry_id:
            return entry
        return entry.reparked(entry.reason, entry.parked_at, earlier)

    def read(self, store: str) -> Iterator[tuple[str, DeadLetter]]:
        folder = self.root / _safe(store)
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.json")):
            try:
                with open(path, encoding="utf-8") as fh:
                    stat = os.fstat(fh.fileno())
                    doc = json.load(fh)
                entry = parse_entry(doc, store)
            except (OSError, UnicodeDecodeError, ValueError, RecursionError, Unreadable) as exc:
                self._skip(store, path.name, f"{type(exc).__name__}: {exc}")
                continue
            self._seen[path] = (stat.st_ino, stat.st_mtime_ns)
            yield path.name, entry

    def remove(self, store: str, handles: Sequence[str]) -> None:
        folder = self.root / _safe(store)
        for handle in handles:
            path = folder / Path(handle).name
            seen = self._seen.pop(path, None)
            if seen is not None:
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                if (stat.st_ino, stat.st_mtime_ns) != seen:
                    continue  # parked again since it was read: the new entry stays
            path.unlink(missing_ok=True)

    def release(self, store: str, handles: Sequence[str]) -> None:
        """Forget handles that were read and are not to be removed (nothing to give back here)."""
        folder = self.root / _safe(store)
        for handle in handles:
            self._seen.pop(folder / Path(handle).name, None)

    def stores(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def depth(self, store: str) -> int:
        folder = self.root / _safe(store)
        return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


# SQS limits (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html):
# a message, body plus attributes, is at most 1 MiB, and so is the sum of a batch's messages.
SQS_MAX_MESSAGE_BYTES = 1_048_576
SQS_MAX_BATCH_BYTES = 1_048_576
SQS_MAX_BATCH_ENTRIES = 10
# A read skips entries sent this long after it began (by a live worker parking meanwhile), so that a
# target still failing cannot keep a redrive going forever; the margin covers clock skew.
LATE_PARK_MS = 300_000


class S3Payloads:
    """Where an SQS entry too large for one message keeps its body (the claim-check pattern): one
    object per entry, the message holding only its bucket and key. Objects are deleted after their
    message; an object left behind by a crash in between is harmless (a lifecycle rule expires it)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "tablesync/dead-letters/") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    def put(self, store: str, body: str) -> dict[str, str]:
        key = f"{self.prefix}{_safe(store)}/{uuid.uuid4().hex}.json"
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body.encode("utf-8"),
                               ContentType="application/json")
        return {"bucket": self.bucket, "key": key}

    def check(self, store: str, pointer: Any) -> dict[str, str]:
        """The pointer, if it names an object this store could have written: in the configured
        bucket, under `<prefix><store>/`. Anything else is a forged or foreign message: Unreadable,
        and the object it names is never read nor deleted."""
        if not (isinstance(pointer, dict) and isinstance(pointer.get("bucket"), str)
                and isinstance(pointer.get("key"), str)):
            raise Unreadable("field 'payload' is not an S3 pointer (bucket and key strings)")
        bucket, key = pointer["bucket"], pointer["key"]
        inside = f"{self.prefix}{_safe(store)}/"
        if bucket != self.bucket or not key.startswith(inside) or ".." in key.split("/") or len(key) > 1024:
            raise Unreadable(f"the payload pointer s3://{bucket}/{key} is outside the configured "
                             f"s3://{self.bucket}/{inside}; refused (the object is neither read nor deleted)")
        return {"bucket": bucket, "key": key}

    def get(self, pointer: Mapping[str, str]) -> Any:
        answer = self.client.get_object(Bucket=pointer["bucket"], Key=pointer["key"])
        return json.loads(answer["Body"].read())

    def delete(self, pointers: Sequence[Mapping[str, str]]) -> None:
        by_bucket: dict[str, list[str]] = {}
        for pointer in pointers:
            by_bucket.setdefault(pointer["bucket"], []).append(pointer["key"])
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})


class SqsDeadLetters(_UnreadableLog):
    """One SQS queue per store (`queue_urls[store]`, or `default_url` for stores not listed).

    Batches are cut at 10 entries and at SQS's total size. An entry larger than one message (a
    parked record can be close to 1 MB, and base64 makes it a third larger) is stored in S3
    through `payloads` with a pointer in its message; with no `payloads`, parking it fails with
    a message that names the setting, and the change stays unacknowledged: nothing is lost."""

    def __init__(self, client: Any, queue_urls: Mapping[str, str], default_url: str | None = None, *,
                 payloads: S3Payloads | None = None, max_message_bytes: int = SQS_MAX_MESSAGE_BYTES,
                 max_batch_bytes: int = SQS_MAX_BATCH_BYTES) -> None:
        super().__init__()
        self.client = client
        self.queue_urls = dict(queue_urls)
        self.default_url = default_url
        self.payloads = payloads
        self.max_message_bytes = max_message_bytes
        self.max_batch_bytes = max_batch_bytes
        self._pointers: dict[str, dict[str, str]] = {}  # receipt handle -> S3 pointer, from read()
        self._reading: dict[str, set[str]] = {}  # store being read -> ids of messages parked meanwhile

    def _url(self, store: str) -> str:
        url = self.queue_urls.get(store, self.default_url)
        if not url:
            raise ParkFailed(store, "no dead-letter queue configured for this store")
        return url

    @staticmethod
    def _size(store: str, body: str) -> int:
        # SQS counts the body and each attribute's name, type and value
        return len(body.encode("utf-8")) + len("store") + len("String") + len(store.encode("utf-8"))

    def _message(self, store: str, entry: DeadLetter) -> tuple[str, int]:
        doc = entry.to_json()
        body = json.dumps(doc)
        size = self._size(store, body)
        if size <= self.max_message_bytes:
            return body, size
        if self.payloads is None:
            raise ParkFailed(store, f"the entry takes {size} bytes, more than the {self.max_message_bytes} "
                                    "of one SQS message; set dead_letter.payload_bucket so that large "
                                    "entries are kept in S3")
        try:
            pointer = self.payloads.put(store, body)
        except (ClientError, BotoCoreError) as exc:
            raise ParkFailed(store, f"storing a large entry in S3: {type(exc).__name__}: {exc}") from exc
        small = {k: v for k, v in doc.items() if k != "data"}
        body = json.dumps({**small, "payload": pointer})
        return body, self._size(store, body)

    def park(self, entries: Sequence[DeadLetter]) -> None:
        by_store: dict[str, list[DeadLetter]] = {}
        for entry in entries:
            by_store.setdefault(entry.store, []).append(entry)
        for store, items in by_store.items():
            url = self._url(store)
            batch: list[dict[str, Any]] = []
            batch_bytes = 0
            for entry in items:
                body, size = self._message(store, entry)
                if batch and (len(batch) == SQS_MAX_BATCH_ENTRIES or batch_bytes + size > self.max_batch_bytes):
                    self._send(store, url, batch)
                    batch, batch_bytes = [], 0
                message: dict[str, Any] = {
                    "Id": str(len(batch)), "MessageBody": body,
                    "MessageAttributes": {"store": {"DataType": "String", "StringValue": store}}}
                if url.endswith(".fifo"):
                    # a FIFO queue drops a message whose id it saw in the last 5 minutes: the same
                    # record parked twice in a row (a replay) is stored once; a further attempt
                    # (a redrive that failed again) is a new message, as the old one is deleted
                    message["MessageDeduplicationId"] = f"{entry.entry_id}-{entry.attempts}"
                    message["MessageGroupId"] = store
                batch.append(message)
                batch_bytes += size
            if batch:
                self._send(store, url, batch)

    def _send(self, store: str, url: str, batch: list[dict[str, Any]]) -> None:
        try:
            answer = self.client.send_message_batch(QueueUrl=url, Entries=batch)
        except (ClientError, BotoCoreError) as exc:
            raise ParkFailed(store, f"{type(exc).__name__}: {exc}") from exc
        if answer.get("Failed"):
            raise ParkFailed(store, f"SQS refused {len(answer['Failed'])} entries: {answer['Failed'][0]}")
        if store in self._reading:
            self._reading[store].update(ok.get("MessageId", "") for ok in answer.get("Successful", []))

    def read(self, store: str) -> Iterator[tuple[str, DeadLetter]]:
        """This store's entries, once each, until the queue has no visible message left.

        Messages this read does not take stay invisible until it ends, then are released at once:
        another store's entries (one queue may serve every target), entries this sink parks while
        the read runs (a redrive re-parking what still fails), and entries sent well after the read
        began. Given back at once, they would be received again and again: the read would never
        see an empty queue."""
        url = self._url(store)
        started_ms = time.time() * 1000
        held: list[str] = []
        held_ids: set[str] = set()
        self._reading[store] = set()
        try:
            while True:
                answer = self.client.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=300,
                    MessageAttributeNames=["All"], AttributeNames=["SentTimestamp"],
                )
                messages = answer.get("Messages", [])
                if not messages:
                    return
                for n, message in enumerate(messages):
                    handle = message["ReceiptHandle"]
                    if message.get("MessageId") in held_ids:
                        # a held message is back: its visibility timeout ran out before the read
                        # could see an empty queue (a huge backlog of other stores). Stop here;
                        # what is left of this store waits for the next read.
                        log.warning("dead-letter read of store %s stopped after holding %d other messages for "
                                    "the visibility timeout; run it again for the rest", store, len(held_ids))
                        held.extend(m["ReceiptHandle"] for m in messages[n:])
                        return
                    message_id = message.get("MessageId", handle)
                    try:
                        doc = json.loads(message["Body"])
                    except (ValueError, RecursionError) as exc:  # ValueError: an integer of > 4,300 digits too
                        doc = None
                        broken = f"the message body is not JSON ({exc})"
                    attributes = message.get("MessageAttributes", {}).get("store", {})
                    # the store an entry belongs to: its body says, else its attribute; an entry
                    # that names none at all is reported by whichever store's read meets it
                    named = doc.get("store") if isinstance(doc, dict) else None
                    if not isinstance(named, str):
                        named = attributes.get("StringValue", store)
                    sent_ms = float(message.get("Attributes", {}).get("SentTimestamp", 0))
                    if (named != store or message.get("MessageId") in self._reading[store]
                            or sent_ms > started_ms + LATE_PARK_MS):
                        held.append(handle)
                        held_ids.add(message_id)
                        continue
                    if not isinstance(doc, dict):
                        self._skip(store, message_id, broken if doc is None else "the message body is not an object")
                        held.append(handle)
                        held_ids.add(message_id)
                        continue
                    pointer = doc.get("payload")
                    if pointer is not None:
                        if self.payloads is None:
                            raise ParkFailed(store, f"entry {doc.get('key_id')} is kept in S3 ({pointer!r:.300}); "
                                                    "set dead_letter.payload_bucket to read it")
                        try:
                            pointer = self.payloads.check(store, pointer)
                            doc = self.payloads.get(pointer)
                        except (Unreadable, ValueError, RecursionError, UnicodeDecodeError) as exc:
                            self._skip(store, message_id, f"{type(exc).__name__}: {exc}")
                            held.append(handle)
                            held_ids.add(message_id)
                            continue
                        except ClientError as exc:
                            if error_code(exc) not in ("NoSuchKey", "404"):
                                raise
                            # the body is gone (deleted by hand, or expired): this entry cannot be
                            # redriven, but it must not stop the others; it stays for an operator
                            log.error("dead-letter entry %s of store %s points to s3://%s/%s, which no longer "
                                      "exists; left in the queue (%s)", doc.get("key_id"), store, pointer["bucket"],
                                      pointer["key"], message.get("MessageId"))
                            held.append(handle)
                            continue
                    try:
                        entry = parse_entry(doc, store)
                    except Unreadable as exc:
                        self._skip(store, message_id, str(exc))
                        held.append(handle)
                        held_ids.add(message_id)
                        continue
                    if pointer is not None:
                        self._pointers[handle] = pointer
                    yield handle, entry
        finally:
            del self._reading[store]
            self._release(url, held)

    def release(self, store: str, handles: Sequence[str]) -> None:
        """Make messages a read gave visible again at once (a listing or a dry run, which removes
        nothing, must not hide them from the next read for the visibility timeout)."""
        for handle in handles:
            self._pointers.pop(handle, None)
        self._release(self._url(store), handles)

    def _release(self, url: str, handles: Sequence[str]) -> None:
        for start in range(0, len(handles), SQS_MAX_BATCH_ENTRIES):
            chunk = handles[start : start + SQS_MAX_BATCH_ENTRIES]
            self.client.change_message_visibility_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0} for i, h in enumerate(chunk)])

    def remove(self, store: str, handles: Sequence[str]) -> None:
        url = self._url(store)
        for start in range(0, len(handles), SQS_MAX_BATCH_ENTRIES):
            chunk = handles[start : start + SQS_MAX_BATCH_ENTRIES]
            answer = self.client.delete_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(chunk)]
            )
            # an object goes only once its message is gone; a message that stays (its deletion
            # failed) reappears after the visibility timeout and still finds its payload
            deleted = [chunk[int(ok["Id"])] for ok in answer.get("Successful", [])]
            pointers = [self._pointers.pop(h) for h in deleted if h in self._pointers]
            if pointers and self.payloads is not None:
                self.payloads.delete(pointers)

    def depth(self, store: str) -> int:
        """Visible messages of the store's queue, approximately: of every store sharing that queue."""
        attrs = self.client.get_queue_attributes(
            QueueUrl=self._url(store), AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


class RoutedDeadLetters:
    """Routes each store to its own sink (per-target settings); unknown stores go to `default`."""

    def __init__(self, routes: Mapping[str, Any], default: Any) -> None:
        self.routes = dict(routes)
        self.default = default

    def _sink(self, store: str) -> Any:
        return self.routes.get(store, self.default)

    def park(self, entries: Sequence[DeadLetter]) -> None:
        by_sink: dict[int, tuple[Any, list[DeadLetter]]] = {}
        for entry in entries:
            sink = self._sink(entry.store)
            by_sink.setdefault(id(sink), (sink, []))[1].append(entry)
        for sink, group in by_sink.values():
            sink.park(group)

    def read(self, store: str) -> Iterator[tuple[str, DeadLetter]]:
        return self._sink(store).read(store)  # type: ignore[no-any-return]

    def unreadable(self, store: str) -> list[tuple[str, str]]:
        skipped = getattr(self._sink(store), "unreadable", None)
        return list(skipped(store)) if callable(skipped) else []

    def remove(self, store: str, handles: Sequence[str]) -> None:
        self._sink(store).remove(store, handles)

    def release(self, store: str, handles: Sequence[str]) -> None:
        release = getattr(self._sink(store), "release", None)
        if callable(release):
            release(store, handles)

    def stores(self) -> list[str]:
        found: set[str] = set()
        for sink in [*self.routes.values(), self.default]:
            listing = getattr(sink, "stores", None)
            if callable(listing):
                found.update(listing())
        return sorted(found)

    def depth(self, store: str) -> int:
        return int(self._sink(store).depth(store))
