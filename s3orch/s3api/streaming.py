"""Writing a byte stream to an HTTP response at the pace the client reads it."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.server import Request
from zope.interface import implementer

from s3orch.streams import ByteSource


@implementer(IPushProducer)
class _Pacer:
    """Registered on the response so the transport can tell us to wait."""

    def __init__(self) -> None:
        self.waiting: Deferred[None] | None = None

    def pauseProducing(self) -> None:
        if self.waiting is None:
            self.waiting = Deferred()

    def resumeProducing(self) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        # The connection is gone; the request's finish notification cancels us.
        self.resumeProducing()


async def write_body(request: Request, body: ByteSource) -> None:
    """Copy ``body`` into ``request``, pausing whenever the client falls behind."""
    pacer = _Pacer()
    request.registerProducer(pacer, True)
    try:
        async for chunk in body:
            if request._disconnected:
                break
            request.write(chunk)
            if pacer.waiting is not None:
                await pacer.waiting
    finally:
        request.unregisterProducer()
        await body.aclose()
