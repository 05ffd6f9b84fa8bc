"""Shared pytest fixtures."""

from __future__ import annotations

import pytest

from mirai_magics.server import OfflineServer


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own memory/call-log directory and no real key or endpoint."""
    for name in ("OPENAI_API_KEY", "MIRAI_BASE_URL", "OPENAI_BASE_URL", "MIRAI_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name in ("MIRAI_REPLAY", "MIRAI_RECORD", "MIRAI_REPLAY_MODE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "mirai-home"
    monkeypatch.setenv("MIRAI_HOME", str(home))
    return home


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
