"""Dead-letter stores: entries come back byte for byte; a store that cannot write says so (ParkFailed)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import boto3
import pytest

from kcl_app.adapters.dead_letters import SQS_MAX_MESSAGE_BYTES, DirectoryDeadLetters, S3Payloads, SqsDeadLetters
from kcl_app.core.errors import ParkFailed
from kcl_app.ports import DeadLetter

RAW = b"\x00\xff{not json at all \xe2\x82"


def letter(store: str, n: int = 0, data: bytes = RAW) -> DeadLetter:
    return DeadLetter(store=store, reason=f"reason {n}", data=data + str(n).encode(), sequence_number=f"{n:020d}",
                      shard_id="shardId-000000000003", parked_at=1_790_000_000.5 + n, key_id='{"pk":{"S":"a"}}',
                      version=f"{n:020d}#e")


def test_dead_letter_json_round_trip() -> None:
    entry = letter("t", 7)
    doc = json.loads(json.dumps(entry.to_json()))
    assert DeadLetter.from_json(doc) == entry


def test_directory_store_round_trip_and_removal(tmp_path) -> None:
    sink = DirectoryDeadLetters(tmp_path / "dl")
    assert sink.stores() == [] and sink.depth("eu") == 0 and list(sink.read("eu")) == []
    entries = [letter("eu", n) for n in range(3)] + [letter("_poison", 9)]
    sink.park(entries)
    assert sink.stores() == ["_poison", "eu"]
    assert sink.depth("eu") == 3 and sink.depth("_poison") == 1
    read = list(sink.read("eu"))
    assert [e for _, e in read] == entries[:3]  # oldest first, bytes intact
    assert [e for _, e in sink.read("_poison")] == [entries[3]]
    assert not list((tmp_path / "dl").rglob("*.tmp")), "no temporary file survives a park"
    sink.remove("eu", [read[0][0], read[2][0]])
    assert [e for _, e in sink.read("eu")] == [entries[1]]
    sink.remove("eu", [read[0][0]])  # removing twice is harmless


def test_directory_store_that_cannot_write_raises_park_failed(tmp_path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ParkFailed) as caught:
        DirectoryDeadLetters(blocker).park([letter("eu")])
    assert caught.value.store == "eu"
    assert "dead-letter store 'eu' failed" in str(caught.value)


@pytest.mark.parametrize("store", ["", "../x", "a/b"])
def test_store_names_cannot_escape_the_root(tmp_path, store) -> None:
    with pytest.raises(ValueError, match="invalid dead-letter store name"):
        DirectoryDeadLetters(tmp_path).park([letter(store)])


@pytest.fixture
def sqs(moto) -> Any:
    return boto3.client("sqs", region_name="us-east-1")


def test_sqs_store_round_trip_in_batches_of_ten(sqs) -> None:
    eu = sqs.create_queue(QueueName="dl-eu")["QueueUrl"]
    default = sqs.create_queue(QueueName="dl-default")["QueueUrl"]
    sink = SqsDeadLetters(sqs, {"eu": eu}, default_url=default)
    entries = [letter("eu", n) for n in range(23)]
    sink.park(entries + [letter("_poison", 99)])
    assert sink.depth("eu") == 23 and sink.depth("_poison") == 1
    read = list(sink.read("eu"))
    assert sorted((e for _, e in read), key=lambda e: e.sequence_number) == entries
    sink.remove("eu", [h for h, _ in read])
    assert sink.depth("eu") == 0
    (only,) = [e for _, e in sink.read("_poison")]
    assert only.data == RAW + b"99"


def test_sqs_batches_are_cut_at_the_total_size_sqs_accepts(sqs) -> None:
    url = sqs.create_queue(QueueName="dl-eu")["QueueUrl"]
    entries = [letter("eu", n, os.urandom(200_000)) for n in range(10)]  # ~267 KB each once in base64
    whole = [{"Id": str(i), "MessageBody": json.dumps(e.to_json())} for i, e in enumerate(entries)]
    with pytest.raises(sqs.exceptions.ClientError, match="BatchRequestTooLong"):
        sqs.send_message_batch(QueueUrl=url, Entries=whole)  # what one batch of ten would meet

    sink = SqsDeadLetters(sqs, {"eu": url})
    sink.park(entries)
    assert sorted((e for _, e in sink.read("eu")), key=lambda e: e.sequence_number) == entries


@pytest.fixture
def bucket(moto) -> Any:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="dl-payloads")
    return s3


def objects(s3: Any) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket="dl-payloads").get("Contents", [])]


def test_an_entry_larger_than_one_message_is_kept_in_s3_and_comes_back_whole(sqs, bucket) -> None:
    url = sqs.create_queue(QueueName="dl-eu")["QueueUrl"]
    sink = SqsDeadLetters(sqs, {"eu": url}, payloads=S3Payloads(bucket, "dl-payloads", "p/"))
    big = letter("eu", 1, os.urandom(900_000))  # a parked record near 1 MB: 1.2 MB in base64
    small = letter("eu", 2)
    sink.park([big, small])

    (key,) = objects(bucket)
    assert key.startswith("p/eu/") and key.endswith(".json")
    bodies = [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                                       VisibilityTimeout=0)["Messages"]]
    assert max(len(b) for b in bodies) < 2000, "the message holds a pointer, not the payload"
    assert any(json.loads(b).get("payload") == {"bucket": "dl-payloads", "key": key} for b in bodies)

    read = list(sink.read("eu"))
    assert sorted((e for _, e in read), key=lambda e: e.sequence_number) == [big, small]
    sink.remove("eu", [h for h, _ in read])
    assert sink.depth("eu") == 0 and objects(bucket) == [], "the object goes with its message"


def test_an_entry_whose_s3_body_is_gone_is_left_and_does_not_stop_the_others(sqs, bucket, caplog) -> None:
    url = sqs.create_queue(QueueName="dl-eu")["QueueUrl"]
    sink = SqsDeadLetters(BoundedSqs(sqs), {"eu": url}, payloads=S3Payloads(bucket, "dl-payloads", "p/"))
    sink.park([letter("eu", 1, os.urandom(900_000)), letter("eu", 2)])
    (key,) = objects(bucket)
    bucket.delete_object(Bucket="dl-payloads", Key=key)

    assert [e.sequence_number for _, e in sink.read("eu")] == [f"{2:020d}"]
    assert "no longer exists; left in the queue" in caplog.text
    counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert counts["ApproximateNumberOfMessages"] == "1", "the entry left is visible again at once"
    assert counts["ApproximateNumberOfMessagesNotVisible"] == "1", "the one read waits for its removal"


def test_an_entry_larger_than_one_message_without_a_bucket_is_refused_clearly(sqs) -> None:
    url = sqs.create_queue(QueueName="dl-eu")["QueueUrl"]
    sink = SqsDeadLetters(sqs, {"eu": url})
    with pytest.raises(ParkFailed, match="set dead_letter.payload_bucket") as caught:
        sink.park([letter("eu", 1, os.urandom(SQS_MAX_MESSAGE_BYTES))])
    assert caught.value.store == "eu" and sink.depth("eu") == 0


def test_a_payload_that_cannot_be_stored_is_a_failed_park(sqs, moto) -> None:
    url = sqs.create_queue(QueueName="dl-eu")["QueueUrl"]
    s3 = boto3.client("s3", region_name="us-east-1")  # no such bucket
    sink = SqsDeadLetters(sqs, {"eu": url}, payloads=S3Payloads(s3, "absent-bucket"))
    with pytest.raises(ParkFailed, match="NoSuchBucket"):
        sink.park([letter("eu", 1, os.urandom(SQS_MAX_MESSAGE_BYTES))])
    assert sink.depth("eu") == 0


class BoundedSqs:
    """An SQS client that fails the test instead of looping: at most `limit` ReceiveMessage calls."""

    def __init__(self, inner: Any, limit: int = 50) -> None:
        self.inner = inner
        self.calls = 0
        self.limit = limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def receive_message(self, **kwargs: Any) -> Any:
        self.calls += 1
        assert self.calls <= self.limit, "the read never ends"
        return self.inner.receive_message(**kwargs)


def test_one_queue_shared_by_every_target_reads_one_store_and_keeps_the_others(sqs) -> None:
    """The worker stack's layout: one queue, the store in each message."""
    url = sqs.create_queue(QueueName="dl-all")["QueueUrl"]
    sink = SqsDeadLetters(BoundedSqs(sqs), {}, default_url=url)
    sink.park([letter("eu", n) for n in range(3)] + [letter("us", n) for n in range(12)])

    read = list(sink.read("eu"))
    assert sorted(e.sequence_number for _, e in read) == [f"{n:020d}" for n in range(3)]
    sink.remove("eu", [h for h, _ in read])
    us = [e for _, e in sink.read("us")]  # released at the end of the first read, not 5 minutes later
    assert sorted(e.sequence_number for e in us) == [f"{n:020d}" for n in range(12)]


def test_entries_parked_while_a_store_is_read_wait_for_the_next_read(sqs) -> None:
    """A redrive re-parking what still fails must not read its own re-parks: it would never end."""
    url = sqs.create_queue(QueueName="dl-eu")["QueueUrl"]
    sink = SqsDeadLetters(BoundedSqs(sqs), {"eu": url})
    sink.park([letter("eu", n) for n in range(4)])
    seen = []
    for handle, entry in sink.read("eu"):
        seen.append(entry.sequence_number)
        sink.park([letter("eu", 100 + len(seen))])  # failed again: parked anew ...
        sink.remove("eu", [handle])                 # ... and the old entry removed
    assert sorted(seen) == [f"{n:020d}" for n in range(4)]
    again = sorted(e.sequence_number for _, e in sink.read("eu"))
    assert again == [f"{n:020d}" for n in range(101, 105)], "the re-parked entries, each once"


def test_sqs_store_without_a_queue_refuses(sqs) -> None:
    sink = SqsDeadLetters(sqs, {})
    with pytest.raises(ParkFailed, match="no dead-letter queue configured"):
        sink.park([letter("eu")])


def test_sqs_errors_become_park_failed(sqs) -> None:
    sink = SqsDeadLetters(sqs, {"eu": "https://sqs.us-east-1.amazonaws.com/123456789012/absent"})
    with pytest.raises(ParkFailed) as caught:
        sink.park([letter("eu")])
    assert caught.value.store == "eu" and "QueueDoesNotExist" in caught.value.reason


class PartialSqs:
    """An SQS client whose SendMessageBatch refuses the second entry of every batch (a partial failure)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.sent += [e["Id"] for e in Entries[:1]]
        failed = [{"Id": e["Id"], "SenderFault": False, "Code": "InternalError"} for e in Entries[1:2]]
        return {"Successful": [{"Id": e["Id"]} for e in Entries[:1]], "Failed": failed}


def test_a_partial_sqs_batch_is_a_failed_park() -> None:
    sink = SqsDeadLetters(PartialSqs(), {"eu": "url"})
    with pytest.raises(ParkFailed, match="SQS refused 1 entries"):
        sink.park([letter("eu", 0), letter("eu", 1)])


def test_each_target_parks_into_its_own_settings_and_strays_go_to_the_first(tmp_path) -> None:
    from kcl_app.compose import make_dead_letters
    from kcl_app.config import parse

    cfg = parse({"targets": [
        {"name": "a", "source_table": "src", "region": "eu-west-1", "table": "copy-a",
         "dead_letter": {"path": str(tmp_path / "dlq-a")}},
        {"name": "b", "source_table": "src", "region": "eu-west-2", "table": "copy-b",
         "dead_letter": {"path": str(tmp_path / "dlq-b")}},
    ]})
    sink = make_dead_letters(cfg)
    letters = [DeadLetter(store, "why", b"raw-" + store.encode(), "1", "shard-0", 1.0)
               for store in ("a", "b", "_poison")]
    sink.park(letters)
    assert [e.data for _, e in DirectoryDeadLetters(tmp_path / "dlq-a").read("a")] == [b"raw-a"]
    assert [e.data for _, e in DirectoryDeadLetters(tmp_path / "dlq-b").read("b")] == [b"raw-b"]
    assert [e.data for _, e in DirectoryDeadLetters(tmp_path / "dlq-a").read("_poison")] == [b"raw-_poison"]
    assert not (tmp_path / "dlq-b" / "_poison").exists()
    assert [e.data for _, e in sink.read("b")] == [b"raw-b"]


@pytest.mark.parametrize(("url", "region"), [
    ("https://sqs.us-east-1.amazonaws.com/123456789012/tablesync-dl", "us-east-1"),
    ("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q", "cn-north-1"),
    ("https://eu-west-1.queue.amazonaws.com/123456789012/q", "eu-west-1"),
    ("http://127.0.0.1:4566/000000000000/q", None),
])
def test_the_queue_url_names_its_region(url: str, region: str | None) -> None:
    from kcl_app.compose import queue_region

    assert queue_region(url) == region


def test_an_sqs_store_is_reached_in_its_queues_region_not_the_targets() -> None:
    """The worker stack's queue lives in the workers' region; a target is often in another."""
    from kcl_app.compose import make_dead_letters
    from kcl_app.config import parse

    url = "https://sqs.us-east-1.amazonaws.com/123456789012/tablesync-dl"
    cfg = parse({"dead_letter": {"kind": "sqs", "queue_url": url, "payload_bucket": "tablesync-dl-payloads"},
                 "targets": [{"name": "eu", "source_table": "src", "region": "eu-west-1", "table": "copy"}]})
    sink = make_dead_letters(cfg)._sink("eu")  # type: ignore[attr-defined]
    assert sink.client.meta.region_name == "us-east-1"
    assert sink.payloads.client.meta.region_name == "us-east-1"
    with_region = parse({"dead_letter": {"kind": "sqs", "queue_url": "http://127.0.0.1:4566/0/q"},
                         "targets": [{"name": "eu", "source_table": "src", "region": "eu-west-1", "table": "copy"}]})
    assert make_dead_letters(with_region)._sink("eu").client.meta.region_name == "eu-west-1"  # type: ignore[attr-defined]


class ExpiringSqs(BoundedSqs):
    """Every ReceiveMessage also returns the other store's first message again, as SQS does once a
    held message's visibility timeout has run out during a long read."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.first_other: dict[str, Any] | None = None

    def receive_message(self, **kwargs: Any) -> Any:
        answer = super().receive_message(**kwargs)
        messages = answer.get("Messages", [])
        if self.first_other is None:
            self.first_other = next((m for m in messages if json.loads(m["Body"])["store"] == "us"), None)
        elif self.first_other not in messages:
            messages.append(self.first_other)
        return {**answer, "Messages": messages}


def test_a_read_ends_when_held_messages_come_back_before_the_queue_looks_empty(sqs, caplog) -> None:
    url = sqs.create_queue(QueueName="dl-all")["QueueUrl"]
    sink = SqsDeadLetters(ExpiringSqs(sqs), {}, default_url=url)
    sink.park([letter("us", n) for n in range(5)] + [letter("eu", n) for n in range(30)])
    read = list(sink.read("eu"))
    assert 0 < len(read) <= 30 and "run it again for the rest" in caplog.text
    sink.remove("eu", [h for h, _ in read])
    rest = list(SqsDeadLetters(BoundedSqs(sqs), {}, default_url=url).read("eu"))
    assert len(read) + len(rest) == 30, "nothing skipped for good: the next read has the rest"


def test_directory_entries_are_private_whatever_the_umask(tmp_path) -> None:
    old = os.umask(0)
    try:
        root = tmp_path / "new" / "dl"
        sink = DirectoryDeadLetters(root)
        sink.park([letter("eu", 1), letter("_poison", 2)])
        (tmp_path / "old").mkdir()
        (tmp_path / "old" / "eu").mkdir(mode=0o755)  # left by an earlier version
        DirectoryDeadLetters(tmp_path / "old").park([letter("eu", 3)])
    finally:
        os.umask(old)
    assert os.stat(root).st_mode & 0o777 == 0o700
    for folder in (root / "eu", root / "_poison", tmp_path / "old" / "eu"):
        assert os.stat(folder).st_mode & 0o777 == 0o700, folder
        files = list(folder.iterdir())
        assert files and all(os.stat(f).st_mode & 0o777 == 0o600 for f in files), files


def test_sqs_entries_that_name_no_store_are_reported_not_held_forever(sqs) -> None:
    url = sqs.create_queue(QueueName="dl-eu")["QueueUrl"]
    sink = SqsDeadLetters(sqs, {}, default_url=url)  # one queue for every store
    sink.park([letter("eu", 1)])
    for body in ("not json", json.dumps({"reason": "r", "data": ""}), json.dumps({"store": 7}), "[]"):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    sqs.send_message(QueueUrl=url, MessageBody="{", MessageAttributes={
        "store": {"DataType": "String", "StringValue": "other"}})
    assert [e for _, e in sink.read("eu")] == [letter("eu", 1)]
    assert len(sink.unreadable("eu")) == 4 and sink.unreadable("eu") == [], "reported once, then cleared"
    # the broken one of "other" is reported by its own store's read; those naming no store, by each
    assert list(sink.read("other")) == [] and len(sink.unreadable("other")) == 5


def test_directory_store_recreates_a_folder_removed_meanwhile(tmp_path) -> None:
    import shutil

    sink = DirectoryDeadLetters(tmp_path / "dl")
    sink.park([letter("eu", 1)])
    shutil.rmtree(tmp_path / "dl")
    sink.park([letter("eu", 2)])
    assert [e.sequence_number for _, e in sink.read("eu")] == [f"{2:020d}"]
    assert os.stat(tmp_path / "dl" / "eu").st_mode & 0o777 == 0o700


def test_the_same_record_parked_twice_is_one_entry_with_its_first_time_and_two_attempts(tmp_path) -> None:
    sink = DirectoryDeadLetters(tmp_path / "dl")
    first = letter("eu", 1)
    sink.park([first])
    later = dataclasses.replace(first, reason="still down", parked_at=first.parked_at + 600)
    assert later.entry_id == first.entry_id, "the id ignores the time and the reason"
    sink.park([later])
    (entry,) = [e for _, e in sink.read("eu")]
    assert (entry.attempts, entry.first_parked, entry.parked_at, entry.reason) == (
        2, first.parked_at, first.parked_at + 600, "still down")
    other = letter("eu", 2)
    assert other.entry_id != first.entry_id
    assert letter("us", 1).entry_id != first.entry_id, "per store"


def test_an_entry_parked_again_after_it_was_read_is_not_removed_with_the_old_handle(tmp_path) -> None:
    sink = DirectoryDeadLetters(tmp_path / "dl")
    sink.park([letter("eu", 1), letter("eu", 2)])
    read = list(sink.read("eu"))
    sink.park([read[0][1]])  # a redrive that failed again: the same file, rewritten
    sink.remove("eu", [h for h, _ in read])
    (left,) = [e for _, e in sink.read("eu")]
    assert left.sequence_number == f"{1:020d}" and left.attempts == 2


def test_entries_written_before_attempts_existed_read_as_a_first_park(tmp_path) -> None:
    folder = tmp_path / "dl" / "eu"
    folder.mkdir(parents=True)
    doc = letter("eu", 3).to_json()
    for name in ("first_parked_at", "attempts", "entry_id"):
        del doc[name]
    (folder / "001790000003500-0123abcd.json").write_text(json.dumps(doc))
    (entry,) = [e for _, e in DirectoryDeadLetters(tmp_path / "dl").read("eu")]
    assert entry.attempts == 1 and entry.first_parked == doc["parked_at"]
    assert DeadLetter.from_json(doc) == entry


@pytest.mark.parametrize("field,value", [("attempts", 0), ("attempts", "2"), ("attempts", True),
                                         ("first_parked_at", "yesterday")])
def test_forged_history_fields_are_unreadable(tmp_path, field, value) -> None:
    folder = tmp_path / "dl" / "eu"
    folder.mkdir(parents=True)
    doc = {**letter("eu", 4).to_json(), field: value}
    (folder / "x.json").write_text(json.dumps(doc))
    sink = DirectoryDeadLetters(tmp_path / "dl")
    assert list(sink.read("eu")) == []
    (skipped,) = sink.unreadable("eu")
    assert field in skipped[1]


def test_a_fifo_queue_deduplicates_a_replayed_record_but_not_a_further_attempt(sqs) -> None:
    url = sqs.create_queue(QueueName="dl-eu.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    sink = SqsDeadLetters(sqs, {"eu": url})
    first = letter("eu", 1)
    sink.park([first])
    sink.park([dataclasses.replace(first, parked_at=first.parked_at + 1)])  # a replay
    read = list(sink.read("eu"))
    assert [e.sequence_number for _, e in read] == [first.sequence_number], "stored once"
    sink.release("eu", [h for h, _ in read])
    again = first.reparked("still down", first.parked_at + 60, first)
    sink.park([again])
    assert sorted(e.attempts for _, e in sink.read("eu")) == [1, 2]


@pytest.mark.parametrize("body", ['{"store": "eu", "attempts": ' + "9" * 5000 + "}", "[" * 100_000])
def test_an_entry_json_cannot_parse_is_skipped_not_raised(tmp_path, body) -> None:
    folder = tmp_path / "dl" / "eu"
    folder.mkdir(parents=True)
    (folder / "huge.json").write_text(body)
    sink = DirectoryDeadLetters(tmp_path / "dl")
    sink.park([letter("eu", 1)])
    assert [e.sequence_number for _, e in sink.read("eu")] == [f"{1:020d}"]
    assert [h for h, _ in sink.unreadable("eu")] == ["huge.json"]


def test_a_re_park_keeps_the_first_time_even_from_a_machine_whose_clock_is_behind() -> None:
    first = letter("eu", 1)
    # the redrive that re-parks it runs where the clock reads 30 s earlier than the first park's
    fresh = dataclasses.replace(first, parked_at=first.parked_at - 30, reason="still down")
    again = fresh.reparked("still down", fresh.parked_at, first)
    assert (again.first_parked, again.attempts, again.parked_at) == (first.parked_at, 2, first.parked_at - 30)
    third = again.reparked("still down", again.parked_at + 5, again)
    assert (third.first_parked, third.attempts) == (first.parked_at, 3)
