"""Dead-letter stores: where a change goes when a target cannot take it. Never lose it.

Two stores behind the DeadLetterSink port:

* `DirectoryDeadLetters` (the embedded default): one JSON file per entry under
  `<root>/<store>/`, written to a temporary name, fsynced, then renamed, so an entry is either
  whole or absent after a crash.
* `SqsDeadLetters` (AWS): one queue per store; SendMessageBatch, and a partial failure
  (`Failed` in the answer) is a failure of the whole park.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kcl_app.core.errors import ParkFailed
from kcl_app.ports import DeadLetter


def _safe(store: str) -> str:
    if not store or "/" in store or store.startswith(".."):
        raise ValueError(f"invalid dead-letter store name {store!r}")
    return store


class DirectoryDeadLetters:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def park(self, entries: Sequence[DeadLetter]) -> None:
        touched: set[Path] = set()
        for entry in entries:
            folder = self.root / _safe(entry.store)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                name = f"{int(entry.parked_at * 1000):015d}-{uuid.uuid4().hex}.json"
                tmp = folder / f".{name}.tmp"
                with open(tmp, "w", encoding="utf-8") as fh:
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

    def read(self, store: str) -> Iterator[tuple[str, DeadLetter]]:
        folder = self.root / _safe(store)
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.json")):
            with open(path, encoding="utf-8") as fh:
                yield path.name, DeadLetter.from_json(json.load(fh))

    def remove(self, store: str, handles: Sequence[str]) -> None:
        folder = self.root / _safe(store)
        for handle in handles:
            (folder / Path(handle).name).unlink(missing_ok=True)

    def stores(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def depth(self, store: str) -> int:
        folder = self.root / _safe(store)
        return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


class SqsDeadLetters:
    """One SQS queue per store (`queue_urls[store]`, or `default_url` for stores not listed)."""

    def __init__(self, client: Any, queue_urls: Mapping[str, str], default_url: str | None = None) -> None:
        self.client = client
        self.queue_urls = dict(queue_urls)
        self.default_url = default_url

    def _url(self, store: str) -> str:
        url = self.queue_urls.get(store, self.default_url)
        if not url:
            raise ParkFailed(store, "no dead-letter queue configured for this store")
        return url

    def park(self, entries: Sequence[DeadLetter]) -> None:
        by_store: dict[str, list[DeadLetter]] = {}
        for entry in entries:
            by_store.setdefault(entry.store, []).append(entry)
        for store, items in by_store.items():
            url = self._url(store)
            for start in range(0, len(items), 10):
                chunk = items[start : start + 10]
                batch = [
                    {"Id": str(i), "MessageBody": json.dumps(e.to_json()),
                     "MessageAttributes": {"store": {"DataType": "String", "StringValue": store}}}
                    for i, e in enumerate(chunk)
                ]
                try:
                    answer = self.client.send_message_batch(QueueUrl=url, Entries=batch)
                except (ClientError, BotoCoreError) as exc:
                    raise ParkFailed(store, f"{type(exc).__name__}: {exc}") from exc
                if answer.get("Failed"):
                    raise ParkFailed(store, f"SQS refused {len(answer['Failed'])} entries: {answer['Failed'][0]}")

    def read(self, store: str) -> Iterator[tuple[str, DeadLetter]]:
        url = self._url(store)
        while True:
            answer = self.client.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=300,
                MessageAttributeNames=["All"],
            )
            messages = answer.get("Messages", [])
            if not messages:
                return
            for message in messages:
                entry = DeadLetter.from_json(json.loads(message["Body"]))
                if entry.store == store:
                    yield message["ReceiptHandle"], entry
                else:  # another store's entry in a shared queue: give it back at once
                    self.client.change_message_visibility(
                        QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                    )

    def remove(self, store: str, handles: Sequence[str]) -> None:
        url = self._url(store)
        for start in range(0, len(handles), 10):
            chunk = handles[start : start + 10]
            self.client.delete_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(chunk)]
            )

    def depth(self, store: str) -> int:
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

    def remove(self, store: str, handles: Sequence[str]) -> None:
        self._sink(store).remove(store, handles)

    def depth(self, store: str) -> int:
        return int(self._sink(store).depth(store))
