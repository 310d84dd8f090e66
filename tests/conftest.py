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
