"""The operator endpoints beside S3: /health and /metrics, and the root that routes to them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from s3orch.httputil import finish_with, serve_async

log = Logger()


class Root(Resource):
    """Sends /health, /metrics and /admin/ to their resources and every other path to S3.

    Bucket names ``health``, ``metrics`` and ``admin`` are refused by the
    configuration, so no bucket is ever shadowed.
    """

    def __init__(
        self, s3: IResource, extra: dict[bytes, IResource], admin: IResource | None = None
    ) -> None:
        super().__init__()
        self.s3 = s3
        self.extra = extra
        self.admin = admin

    def getChild(self, path: bytes, request: Request) -> IResource:
        # Only an exact "/health" or "/metrics" is ours; "/metrics/x" is an S3 key.
        if path in self.extra and request.postpath == []:
            return self.extra[path]
        # The admin API reads the rest of the path itself (/admin/api/...).
        if path == b"admin" and self.admin is not None:
            return self.admin
        # Hand the whole path back to the S3 leaf, which parses request.uri itself.
        return self.s3


class HealthResource(Resource):
    """JSON health: ``ok`` when the database answers, ``degraded`` when it does not."""

    isLeaf = True

    def __init__(self, check: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        super().__init__()
        self.check = check

    def render_GET(self, request: Request) -> Any:
        async def answer() -> None:
            report = await self.check()
            finish_with(request, json.dumps(report).encode(), b"application/json")

        return serve_async(request, answer())

    render_HEAD = render_GET


class MetricsResource(Resource):
    """Prometheus exposition; ``refresh`` updates the gauges read from the database first."""

    isLeaf = True

    def __init__(
        self, registry: CollectorRegistry, refresh: Callable[[], Awaitable[object]]
    ) -> None:
        super().__init__()
        self.registry = registry
        self.refresh = refresh

    def render_GET(self, request: Request) -> Any:
        async def answer() -> None:
            try:
                await self.refresh()
            except Exception:
                log.failure("refreshing gauges for /metrics failed; serving the last values")
            finish_with(request, generate_latest(self.registry), CONTENT_TYPE_LATEST.encode())

        return serve_async(request, answer())
