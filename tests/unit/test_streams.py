"""Byte streams: PushStream back-pressure, body_producer, file_chunks, OrderedThreadCalls.

Everything runs synchronously: fake producers and consumers, and a thread
pool that runs its work when the test says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from s3orch.streams import (
    ByteSource,
    LengthMismatch,
    OrderedThreadCalls,
    PushStream,
    body_producer,
    file_chunks,
)
from s3orch.testing.sources import ScriptedSource

T = TypeVar("T")


class Boom(Exception):
    """A failure injected by a test."""


def start(coro: Coroutine[Any, Any, T]) -> Deferred[T]:
    return Deferred.fromCoroutine(coro)


def outcome(d: Deferred[Any]) -> Any:
    """The result a fired Deferred holds (a Failure if it failed); fails if it has not fired."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    return results[0]


def result_of(d: Deferred[T]) -> T:
    value = outcome(d)
    if isinstance(value, Failure):
        value.raiseException()
    return value  # type: ignore[no-any-return]


def failure_of(d: Deferred[Any], *types: type[BaseException]) -> Failure:
    value = outcome(d)
    assert isinstance(value, Failure), f"expected a failure, got {value!r}"
    assert value.check(*types), value
    return value


def has_fired(d: Deferred[Any]) -> bool:
    return bool(d.called)


async def read_all(source: ByteSource) -> list[bytes]:
    return [chunk async for chunk in source]


@implementer(IPushProducer)
class FakeProducer:
    """Feeds a PushStream ``total`` bytes in ``chunk``-sized pieces while not paused."""

    def __init__(self, stream: PushStream | None = None, total: int = 0, chunk: int = 1) -> None:
        self.stream = stream
        self.remaining = total
        self.chunk = chunk
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.stopped = False
        self.max_buffered = 0

    def pump(self) -> None:
        assert self.stream is not None
        while not self.paused and not self.stopped and self.remaining > 0:
            size = min(self.chunk, self.remaining)
            self.remaining -= size
            self.stream.feed(b"x" * size)
            self.max_buffered = max(self.max_buffered, self.stream.buffered)
        if self.remaining == 0 and not self.stopped:
            self.stream.finish()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1
        if self.stream is not None:
            self.pump()

    def stopProducing(self) -> None:
        self.stopped = True


# -- PushStream -----------------------------------------------------------------------


def test_push_stream_yields_fed_chunks_in_order_then_ends() -> None:
    """Chunks come out in the order fed, and iteration stops after finish()."""
    stream = PushStream()
    stream.feed(b"one")
    stream.feed(b"")
    stream.feed(b"two")
    stream.finish()
    stream.feed(b"late")
    assert result_of(start(read_all(stream))) == [b"one", b"two"]


def test_push_stream_read_waits_for_data() -> None:
    """A read with nothing buffered waits until the producer feeds or finishes."""
    stream = PushStream()
    first = start(stream.__anext__())
    assert not has_fired(first)
    stream.feed(b"data")
    assert result_of(first) == b"data"
    second = start(stream.__anext__())
    assert not has_fired(second)
    stream.finish()
    failure_of(second, StopAsyncIteration)


def test_push_stream_pauses_at_high_water_and_resumes_at_low_water() -> None:
    """The producer is paused once high_water bytes wait, resumed at low_water."""
    stream = PushStream(high_water=100, low_water=40)
    producer = FakeProducer()
    stream.attach(producer)
    for _ in range(9):
        stream.feed(b"x" * 10)
    assert not producer.paused
    stream.feed(b"x" * 10)
    assert producer.paused and stream.paused
    for _ in range(5):
        result_of(start(stream.__anext__()))
    assert producer.paused, "50 bytes left is above low_water"
    result_of(start(stream.__anext__()))
    assert not producer.paused and producer.resumes == 1


def test_push_stream_never_holds_more_than_high_water_plus_a_chunk() -> None:
    """With a producer that honours pauses, the buffer stays within high_water + one chunk."""
    stream = PushStream(high_water=1000)
    producer = FakeProducer(stream, total=100_000, chunk=64)
    stream.attach(producer)
    producer.pump()
    chunks = result_of(start(read_all(stream)))
    assert sum(map(len, chunks)) == 100_000
    assert producer.max_buffered <= 1000 + 64
    assert producer.pauses > 10 and producer.resumes == producer.pauses


def test_push_stream_attach_to_a_full_buffer_pauses_at_once() -> None:
    """Attaching a producer when the buffer is already full pauses it immediately."""
    stream = PushStream(high_water=10)
    stream.feed(b"x" * 20)
    producer = FakeProducer()
    stream.attach(producer)
    assert producer.paused


def test_push_stream_fail_raises_after_queued_data() -> None:
    """fail() ends the stream with the error, after the data already fed."""
    stream = PushStream()
    stream.feed(b"a")
    stream.fail(Boom())
    assert result_of(start(stream.__anext__())) == b"a"
    failure_of(start(stream.__anext__()), Boom)
    failure_of(start(stream.__anext__()), Boom)


def test_push_stream_fail_wakes_a_waiting_reader() -> None:
    """A reader waiting for data gets the error as soon as the producer fails."""
    stream = PushStream()
    waiting = start(stream.__anext__())
    stream.fail(Boom())
    failure_of(waiting, Boom)


def test_push_stream_aclose_stops_producer_and_drops_data() -> None:
    """aclose() releases the buffer, stops the producer and ignores later feeds."""
    stream = PushStream(high_water=10)
    producer = FakeProducer()
    stream.attach(producer)
    stream.feed(b"x" * 50)
    result_of(start(stream.aclose()))
    assert producer.stopped
    assert stream.buffered == 0
    stream.feed(b"more")
    assert stream.buffered == 0
    failure_of(start(stream.__anext__()), StopAsyncIteration)


def test_push_stream_aclose_after_finish_leaves_producer_alone() -> None:
    """A stream whose producer finished does not stop it on aclose (the connection is reusable)."""
    stream = PushStream()
    producer = FakeProducer()
    stream.attach(producer)
    stream.feed(b"x")
    stream.finish()
    result_of(start(stream.aclose()))
    assert not producer.stopped


def test_push_stream_cancelled_read_leaves_stream_usable() -> None:
    """Cancelling a waiting read raises CancelledError; the next read still works."""
    stream = PushStream()
    waiting = start(stream.__anext__())
    waiting.cancel()
    failure_of(waiting, CancelledError)
    stream.feed(b"after")
    assert result_of(start(stream.__anext__())) == b"after"


def test_push_stream_rejects_concurrent_reads() -> None:
    """Two readers at once are a bug, reported as RuntimeError."""
    stream = PushStream()
    start(stream.__anext__())
    failure_of(start(stream.__anext__()), RuntimeError)


def test_push_stream_validates_water_marks() -> None:
    """low_water must be below high_water, and high_water positive."""
    with pytest.raises(ValueError):
        PushStream(high_water=0)
    with pytest.raises(ValueError):
        PushStream(high_water=10, low_water=10)


# -- body_producer ----------------------------------------------------------------------


@implementer(IConsumer)
class FakeConsumer:
    """Collects writes; optionally pauses its producer after each one, like a full socket."""

    def __init__(self, pause_on_write: bool = False) -> None:
        self.writes: list[bytes] = []
        self.pause_on_write = pause_on_write
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        if self.pause_on_write and self.producer is not None:
            self.producer.pauseProducing()


async def chunks(*parts: bytes, error: BaseException | None = None) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    if error is not None:
        raise error


def produce(source: AsyncIterator[bytes], length: int, consumer: FakeConsumer) -> Deferred[None]:
    producer = body_producer(source, length)
    consumer.registerProducer(producer, True)
    d: Deferred[None] = producer.startProducing(consumer)
    return d


def test_body_producer_writes_every_byte() -> None:
    """All bytes reach the consumer, empty chunks are skipped, and the Deferred fires."""
    consumer = FakeConsumer()
    producer = body_producer(chunks(b"ab", b"", b"cd"), 4)
    assert producer.length == 4
    d = producer.startProducing(consumer)
    result_of(d)
    assert consumer.writes == [b"ab", b"cd"]


def test_body_producer_holds_back_the_last_chunk_until_the_source_ends() -> None:
    """A source that fails after its last byte never lets the consumer see a complete body."""
    consumer = FakeConsumer()
    d = produce(chunks(b"ab", b"cd", error=Boom()), 4, consumer)
    failure_of(d, Boom)
    assert consumer.writes == [b"ab"]


def test_body_producer_rejects_a_longer_body_before_writing_past_length() -> None:
    """More bytes than declared fail with LengthMismatch; nothing beyond length is written."""
    consumer = FakeConsumer()
    d = produce(chunks(b"abc", b"def"), 4, consumer)
    failure_of(d, LengthMismatch)
    assert sum(map(len, consumer.writes)) <= 4


def test_body_producer_rejects_a_shorter_body() -> None:
    """Fewer bytes than declared fail with LengthMismatch and the held chunk is not written."""
    consumer = FakeConsumer()
    d = produce(chunks(b"ab"), 4, consumer)
    failure_of(d, LengthMismatch)
    assert consumer.writes == []


def test_body_producer_closes_the_source_on_failure() -> None:
    """An early end (here a length mismatch) closes the source."""
    source = ScriptedSource()
    d = produce(source, 2, FakeConsumer())
    source.give(b"abc")
    failure_of(d, LengthMismatch)
    assert source.closed


def test_body_producer_pulls_at_most_one_chunk_ahead_while_paused() -> None:
    """While the consumer is paused the source is not pulled; resume picks up where it stopped."""
    source = ScriptedSource()
    consumer = FakeConsumer(pause_on_write=True)
    d = produce(source, 9, consumer)
    source.give(b"aaa")  # held back
    source.give(b"bbb")  # writes aaa, consumer pauses; bbb is held
    assert consumer.writes == [b"aaa"]
    source.give(b"ccc")  # must not be written while paused
    assert consumer.writes == [b"aaa"]
    assert source.pending is None, "no pull while paused with a chunk held"
    pulls = source.pulls
    consumer.pause_on_write = False
    consumer.producer.resumeProducing()
    assert consumer.writes == [b"aaa", b"bbb"]
    assert source.pulls == pulls + 1
    source.end()
    result_of(d)
    assert consumer.writes == [b"aaa", b"bbb", b"ccc"]


def test_body_producer_stop_never_fires_and_closes_the_source() -> None:
    """After stopProducing the Deferred never fires (IBodyProducer) and the source is closed."""
    source = ScriptedSource()
    consumer = FakeConsumer()
    producer = body_producer(source, 10)
    d = producer.startProducing(consumer)
    source.give(b"abc")
    producer.stopProducing()
    assert not has_fired(d)
    assert source.closed
    assert consumer.writes == []


def test_body_producer_cancel_fails_with_cancelled_error() -> None:
    """Cancelling the startProducing Deferred stops pulling and closes the source."""
    source = ScriptedSource()
    d = produce(source, 10, FakeConsumer())
    d.cancel()
    failure_of(d, CancelledError)
    assert source.closed


def test_body_producer_rejects_negative_length() -> None:
    """A negative length is a programming error."""
    with pytest.raises(ValueError):
        body_producer(chunks(), -1)


# -- thread pool fakes, file_chunks, OrderedThreadCalls --------------------------------


class ImmediateReactor:
    """callFromThread runs at once: the 'thread' is the test itself."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


class QueuedPool:
    """A thread pool whose work runs only when the test calls run_next()."""

    def __init__(self, immediate: bool = False) -> None:
        self.queue: list[tuple[Any, Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self.immediate = immediate
        self.ran = 0

    def callInThreadWithCallback(
        self, on_result: Any, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        self.queue.append((on_result, func, args, kwargs))
        if self.immediate:
            self.run_next()

    def run_next(self) -> None:
        on_result, func, args, kwargs = self.queue.pop(0)
        self.ran += 1
        try:
            value = func(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, value)


def test_file_chunks_reads_a_region_in_blocks(tmp_path: Path) -> None:
    """The region start..start+length comes out in chunk_size blocks, all read in the pool."""
    path = tmp_path / "f"
    data = bytes(range(256)) * 4
    path.write_bytes(data)
    pool = QueuedPool(immediate=True)
    source = file_chunks(
        path,
        100,
        500,
        reactor=ImmediateReactor(),
        threadpool=pool,
        chunk_size=128,  # type: ignore[arg-type]
    )
    parts = result_of(start(read_all(source)))
    assert [len(p) for p in parts] == [128, 128, 128, 116]
    assert b"".join(parts) == data[100:600]
    assert pool.ran == 5  # four reads and the close


def test_file_chunks_does_not_touch_the_file_outside_the_pool(tmp_path: Path) -> None:
    """Nothing is read until the pool runs the work: the reactor thread never does file I/O."""
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    pool = QueuedPool()
    source = file_chunks(path, 0, 5, reactor=ImmediateReactor(), threadpool=pool)  # type: ignore[arg-type]
    d = start(source.__anext__())
    assert not has_fired(d) and len(pool.queue) == 1
    pool.run_next()
    assert result_of(d) == b"hello"


def test_file_chunks_short_file_raises_length_mismatch(tmp_path: Path) -> None:
    """A file that ends before the region does raises LengthMismatch and closes the file."""
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    with path.open("rb") as file:
        source = file_chunks(
            file,
            0,
            10,
            reactor=ImmediateReactor(),
            threadpool=QueuedPool(immediate=True),  # type: ignore[arg-type]
        )
        assert result_of(start(source.__anext__())) == b"abc"
        failure_of(start(source.__anext__()), LengthMismatch)
        assert file.closed


def test_file_chunks_aclose_closes_an_open_file(tmp_path: Path) -> None:
    """aclose() part way closes the file it was handed."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    file = path.open("rb")
    source = file_chunks(
        file,
        0,
        100,
        reactor=ImmediateReactor(),
        threadpool=QueuedPool(immediate=True),
        chunk_size=10,  # type: ignore[arg-type]
    )
    result_of(start(source.__anext__()))
    result_of(start(source.aclose()))
    assert file.closed
    failure_of(start(source.__anext__()), StopAsyncIteration)


def test_file_chunks_zero_length_yields_nothing(tmp_path: Path) -> None:
    """An empty region ends at once."""
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    source = file_chunks(
        path, 3, 0, reactor=ImmediateReactor(), threadpool=QueuedPool(immediate=True)
    )  # type: ignore[arg-type]
    assert result_of(start(read_all(source))) == []


def test_ordered_thread_calls_wait_for_a_cancelled_call() -> None:
    """A call whose caller gave up still finishes before the next call starts."""
    pool = QueuedPool()
    calls = OrderedThreadCalls(ImmediateReactor(), pool)  # type: ignore[arg-type]
    order: list[str] = []
    first = calls.call(order.append, "first")
    first.cancel()
    failure_of(first, CancelledError)
    second = calls.call(order.append, "second")
    assert len(pool.queue) == 1, "second must wait for first"
    pool.run_next()
    assert len(pool.queue) == 1
    pool.run_next()
    assert order == ["first", "second"]
    assert result_of(second) is None


def test_ordered_thread_calls_report_errors_to_their_caller() -> None:
    """An exception in the thread fails that call's Deferred only."""
    pool = QueuedPool(immediate=True)
    calls = OrderedThreadCalls(ImmediateReactor(), pool)  # type: ignore[arg-type]

    def explode() -> None:
        raise Boom()

    failure_of(calls.call(explode), Boom)
    assert result_of(calls.call(lambda: 42)) == 42
