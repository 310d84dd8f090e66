"""Byte streams with back-pressure: the one currency object bodies move in.

Every object body, in either direction, is an async iterator of ``bytes``
chunks. The consumer pulls; a producer that is pushed data (a treq response,
an HTTP request) buffers at most a bounded amount and pauses its transport
until the consumer catches up.

- ``PushStream`` turns pushes (``feed``/``finish``/``fail``) into pulls and
  pauses an attached ``IPushProducer`` while its buffer is full.
- ``body_producer`` turns a pull source into an ``IBodyProducer`` for request
  bodies, checking the byte count.
- ``file_chunks`` reads a file region through a thread pool, so the reactor
  never waits on a disk.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import IO, Any, Protocol, TypeVar, runtime_checkable

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

_T = TypeVar("_T")

DEFAULT_HIGH_WATER = 1024 * 1024
DEFAULT_READ_SIZE = 256 * 1024


@runtime_checkable
class ByteSource(Protocol):
    """An async iterator of byte chunks that can be closed early."""

    def __aiter__(self) -> ByteSource: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None: ...


async def empty() -> AsyncIterator[bytes]:
    """A stream of no bytes."""
    return
    yield b""


async def primed(source: AsyncIterator[bytes]) -> ByteSource:
    """``source``, with its first block already pulled: whatever fails before the first
    byte raises here, while the caller can still answer with an error."""
    try:
        first = await source.__anext__()
    except StopAsyncIteration:
        first = b""
    except BaseException:
        await close_source(source)
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for block in source:
                yield block
        finally:
            await close_source(source)

    return body()  # type: ignore[return-value]


def read_ahead(source: AsyncIterator[bytes], high_water: int = DEFAULT_HIGH_WATER) -> ByteSource:
    """``source``, pulled in the background until ``high_water`` bytes wait unread.

    For a source that works per block (decryption): the work for the next blocks is done
    while the reader is still busy with the last, instead of only once it asks. Errors
    reach the reader after the blocks before them; closing the stream stops and closes
    ``source``.
    """
    stream = PushStream(high_water, coalesce=True)
    pump = _Pump(source, stream)
    stream.attach(pump)
    Deferred.fromCoroutine(pump.run())
    return stream


@implementer(IPushProducer)
class _Pump:
    """Feeds a PushStream from an async iterator, waiting while the stream is paused."""

    def __init__(self, source: AsyncIterator[bytes], stream: PushStream) -> None:
        self.source = source
        self.stream = stream
        self.resumed: Deferred[None] | None = None
        self.stopped = False

    def pauseProducing(self) -> None:
        if self.resumed is None:
            self.resumed = Deferred()

    def resumeProducing(self) -> None:
        resumed, self.resumed = self.resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()

    async def run(self) -> None:
        try:
            async for block in self.source:
                if self.stopped:
                    break
                self.stream.feed(block)
                if self.resumed is not None:
                    await self.resumed
                if self.stopped:
                    break
        except BaseException as e:
            self.stream.fail(e)
        else:
            self.stream.finish()
        finally:
            await close_source(self.source)


class LengthMismatch(ValueError):
    """A stream carried a different number of bytes than it was declared to."""


async def close_source(source: object) -> None:
    """Close ``source`` if it can be closed (async generators, ByteSources)."""
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


class PushStream:
    """A ``ByteSource`` fed by pushes, pausing its producer while the reader lags.

    The producer side calls ``feed``, then ``finish`` or ``fail``. Once more
    than ``high_water`` bytes wait unread, the attached producer (typically a
    TCP transport) is paused, and it is resumed when the reader has brought
    the buffer down to ``low_water``. A producer that honours pauses at once
    therefore never makes the stream hold more than ``high_water`` plus one
    chunk. Data fed after ``aclose`` is dropped.
    """

    def __init__(
        self,
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: int | None = None,
        coalesce: bool = False,
    ) -> None:
        """``coalesce``: a read returns everything queued as one block (fewer, larger
        writes downstream, for sources that yield many small blocks)."""
        self.coalesce = coalesce
        if high_water <= 0:
            raise ValueError("high_water must be positive")
        self.high_water = high_water
        self.low_water = high_water // 2 if low_water is None else low_water
        if not 0 <= self.low_water < high_water:
            raise ValueError("low_water must be below high_water")
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._producer: IPushProducer | None = None
        self._paused = False
        self._waiter: Deferred[None] | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet read."""
        return self._buffered

    @property
    def paused(self) -> bool:
        """Whether this stream has paused its producer."""
        return self._paused

    def attach(self, producer: IPushProducer) -> None:
        """Pause and resume ``producer`` to keep the buffer bounded; stop it on ``aclose``."""
        self._producer = producer
        if self._closed:
            producer.stopProducing()
        else:
            self._maybe_pause()

    # Producer side.

    def feed(self, data: bytes) -> None:
        """Queue ``data`` for the reader."""
        if self._closed or self._ended or not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._maybe_pause()
        self._wake()

    def finish(self) -> None:
        """Mark the end of the stream: the reader stops after the queued data."""
        if not self._ended:
            self._ended = True
            self._wake()

    def fail(self, exc: BaseException) -> None:
        """End the stream with ``exc``, raised to the reader after the queued data."""
        if not self._ended:
            self._ended = True
            self._error = exc
            self._wake()

    # Consumer side.

    def __aiter__(self) -> PushStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._closed:
                raise StopAsyncIteration
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            if self._waiter is not None:
                raise RuntimeError("PushStream read concurrently")
            self._waiter = Deferred(self._cancel_waiter)
            await self._waiter
        if self.coalesce and len(self._chunks) > 1:
            chunk = b"".join(self._chunks)
            self._chunks.clear()
        else:
            chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= self.low_water and not self._ended:
            self._paused = False
            if self._producer is not None:
                self._producer.resumeProducing()
        return chunk

    async def aclose(self) -> None:
        """Drop the buffer and stop the producer if it has not finished."""
        if self._closed:
            return
        self._closed = True
        self._chunks.clear()
        self._buffered = 0
        producer, self._producer = self._producer, None
        if producer is not None and not self._ended:
            producer.stopProducing()
        self._wake()

    def _maybe_pause(self) -> None:
        if (
            self._producer is not None
            and self._buffered >= self.high_water
            and not self._paused
            and not self._ended
        ):
            self._paused = True
            self._producer.pauseProducing()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def _cancel_waiter(self, waiter: Deferred[None]) -> None:
        if self._waiter is waiter:
            self._waiter = None


@implementer(IBodyProducer)
class _SourceBodyProducer:
    """Writes a pull source to a consumer; see ``body_producer``."""

    def __init__(self, source: AsyncIterator[bytes], length: int) -> None:
        self.length = length
        self._source = source
        self._paused = False
        self._resume: Deferred[None] | None = None
        self._task: Deferred[None] | None = None
        self._stopped = False

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        task = self._task = Deferred.fromCoroutine(self._run(consumer))
        result: Deferred[None] = Deferred(lambda _: task.cancel())

        def finished(outcome: Failure | None) -> None:
            # After stopProducing the returned Deferred must never fire.
            if self._stopped:
                return None
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(None)
            return None

        task.addBoth(finished)
        return result

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        resume, self._resume = self._resume, None
        if resume is not None:
            resume.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    async def _run(self, consumer: IConsumer) -> None:
        # One chunk is held back until the source has ended cleanly, so a
        # source that fails or runs long never lets the peer see a complete body.
        pulled = 0
        held: bytes | None = None
        try:
            async for chunk in self._source:
                if not chunk:
                    continue
                pulled += len(chunk)
                if pulled > self.length:
                    raise LengthMismatch(f"body longer than the declared {self.length} bytes")
                if held is not None:
                    await self._write(consumer, held)
                held = chunk
            if pulled != self.length:
                raise LengthMismatch(f"body ended after {pulled} of {self.length} bytes")
            if held is not None:
                await self._write(consumer, held)
        except BaseException:
            await close_source(self._source)
            raise

    async def _write(self, consumer: IConsumer, data: bytes) -> None:
        while self._paused:
            self._resume = Deferred()
            await self._resume
        if self._stopped:
            raise CancelledError()
        consumer.write(data)


def body_producer(source: AsyncIterator[bytes], length: int) -> IBodyProducer:
    """An ``IBodyProducer`` that writes exactly ``length`` bytes pulled from ``source``.

    It honours pause/resume (no pulling ahead more than one chunk while
    paused) and stop. The last chunk is written only once the source has
    ended, so if ``source`` raises, or yields more or fewer than ``length``
    bytes (``LengthMismatch``), the request is aborted before the peer has a
    complete body. On any early end the source is closed.
    """
    if length < 0:
        raise ValueError("length must not be negative")
    return _SourceBodyProducer(source, length)


class OrderedThreadCalls:
    """Runs blocking calls on one resource in a thread pool, one at a time, in order.

    A caller that stops waiting (its Deferred cancelled) does not stop the
    call already running in a thread; the next call still waits for it. That
    is what makes it safe to close a file after a cancelled read.
    """

    def __init__(self, reactor: IReactorFromThreads, threadpool: ThreadPool) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._tail: Deferred[None] = succeed(None)

    def call(self, f: Callable[..., _T], *args: Any) -> Deferred[_T]:
        result: Deferred[_T] = Deferred()

        def deliver(outcome: _T | Failure) -> None:
            if result.called:  # cancelled meanwhile
                return None
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
            return None

        def run(_: object) -> Deferred[None]:
            # Never fails, so one broken call cannot stall the calls queued after it.
            if result.called:
                return succeed(None)
            try:
                d = deferToThreadPool(self._reactor, self._threadpool, f, *args)
            except BaseException:
                result.errback(Failure())
                return succeed(None)
            return d.addBoth(deliver)

        self._tail = self._tail.addCallback(run)
        return result


class _FileChunks:
    """A file region read through a thread pool; see ``file_chunks``."""

    def __init__(
        self,
        path_or_file: str | os.PathLike[str] | IO[bytes],
        start: int,
        length: int,
        chunk_size: int,
        calls: OrderedThreadCalls,
    ) -> None:
        self._path: str | os.PathLike[str] | None = None
        self._file: IO[bytes] | None = None
        if isinstance(path_or_file, str | os.PathLike):
            self._path = path_or_file
        else:
            self._file = path_or_file
        self._position = start
        self._remaining = length
        self._chunk_size = chunk_size
        self._calls = calls
        self._closed = False
        self._busy = False

    def __aiter__(self) -> _FileChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._closed or self._remaining == 0:
            await self.aclose()
            raise StopAsyncIteration
        if self._busy:
            raise RuntimeError("file_chunks read concurrently")
        self._busy = True
        try:
            want = min(self._chunk_size, self._remaining)
            data = await self._calls.call(self._read, self._position, want)
        except BaseException:
            await self.aclose()
            raise
        finally:
            self._busy = False
        if not data:
            await self.aclose()
            raise LengthMismatch(f"file ended with {self._remaining} bytes still expected")
        self._position += len(data)
        self._remaining -= len(data)
        return data

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._calls.call(self._close)

    def _read(self, position: int, want: int) -> bytes:
        # Runs in the thread pool.
        if self._file is None:
            assert self._path is not None
            self._file = open(self._path, "rb")  # noqa: SIM115 (closed by _close)
        self._file.seek(position)
        parts = []
        while want > 0:
            data = self._file.read(want)
            if not data:
                break
            parts.append(data)
            want -= len(data)
        return b"".join(parts)

    def _close(self) -> None:
        # Runs in the thread pool, after any read still in flight.
        if self._file is not None:
            self._file.close()
            self._file = None


def file_chunks(
    path_or_file: str | os.PathLike[str] | IO[bytes],
    start: int,
    length: int,
    *,
    reactor: IReactorFromThreads,
    threadpool: ThreadPool,
    chunk_size: int = DEFAULT_READ_SIZE,
) -> ByteSource:
    """``length`` bytes of a file from offset ``start``, read in ``chunk_size`` blocks.

    Opening, reading and closing all happen in ``threadpool``. The source
    owns the file (an open file passed in is closed too) and closes it at the
    end, on error, or on ``aclose``. A file shorter than expected raises
    ``LengthMismatch``.
    """
    if start < 0 or length < 0:
        raise ValueError("start and length must not be negative")
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    return _FileChunks(
        path_or_file, start, length, chunk_size, OrderedThreadCalls(reactor, threadpool)
    )
