"""Shared pytest fixtures.

pytest-twisted installs the reactor (``--reactor=default`` unless told
otherwise) and runs it in a greenlet for the whole session; async tests are
marked ``@pytest_twisted.ensureDeferred``.
"""

from __future__ import annotations

import pytest
from twisted.internet.interfaces import IReactorCore


@pytest.fixture(scope="session")
def reactor() -> IReactorCore:
    """The running session reactor that pytest-twisted installed."""
    from twisted.internet import reactor as installed

    return installed  # type: ignore[return-value]


# -- Real S3 servers: moto in its own process (s3orch.testing.moto_server) --------------------

from collections.abc import Iterator  # noqa: E402

from s3orch.testing.moto_server import MotoServer, start_moto_server  # noqa: E402


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """A moto S3 server process on a free 127.0.0.1 port, shared by the whole session.

    Yields an object with ``endpoint``, ``access_key``, ``secret_key``, ``region`` and
    ``make_bucket(name)``; tests should use buckets of their own.
    """
    server = start_moto_server()
    try:
        yield server
    finally:
        server.stop()
