"""Shared pytest fixtures."""

from __future__ import annotations

import pytest

from mirai_magics.server import OfflineServer


@pytest.fixture
def offline_server():
    """A fresh offline OpenAI-compatible server for one test (``srv.url`` is the SDK base_url)."""
    srv = OfflineServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def shared_offline_server():
    """One offline server for a whole test module; call ``srv.reset()`` where state matters."""
    srv = OfflineServer().start()
    try:
        yield srv
    finally:
        srv.stop()
