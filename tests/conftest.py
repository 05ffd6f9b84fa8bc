"""Shared pytest fixtures: isolated home, fake clock and sleep, offline servers, sessions."""

from __future__ import annotations

import os

import pytest

from mirai_magics.server import OfflineServer

SESSION_KEY = "sk-test-session-0123456789abcdef"


class FakeClock:
    """A monotonic clock that moves only when a test (or FakeSleep) moves it."""

    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSleep:
    """Records requested sleeps and advances the fake clock instead of waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps(clock: FakeClock) -> FakeSleep:
    return FakeSleep(clock)


# A cell waits 5 s for earlier cells to be indexed, then searches without them and says so
# on its badge. A loaded 2-core CI machine can need longer than that to start a kernel's
# engine and embed; tests assert what memory finds, not how fast, so they wait up to 60 s.
# Kernels, notebooks and JupyterLab started by the tests inherit it.
os.environ.setdefault("MIRAI_INDEX_WAIT_S", "60")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own memory/call-log directory and no real key or endpoint."""
    for name in ("OPENAI_API_KEY", "MIRAI_BASE_URL", "OPENAI_BASE_URL", "MIRAI_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name in ("MIRAI_REPLAY", "MIRAI_RECORD", "MIRAI_REPLAY_MODE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "mirai-home"
    monkeypatch.setenv("MIRAI_HOME", str(home))
    monkeypatch.setenv("MIRAI_METRICS_PORT", "0")  # each session's /metrics on a free port
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


@pytest.fixture
def make_session(request, offline_server, monkeypatch, clock, sleeps):
    """``make_session(extra_yaml="", fake_time=True)``: a Session on ``offline_server``.

    The API key is the test module's ``KEY`` (so each module can assert it never leaks).
    """
    from mirai_magics.config import parse_config
    from mirai_magics.session import Session

    monkeypatch.setenv("OPENAI_API_KEY", getattr(request.module, "KEY", SESSION_KEY))
    sessions = []

    def make(extra: str = "", fake_time: bool = True) -> Session:
        yaml_text = f"endpoint: {{base_url: '{offline_server.url}'}}\n{extra}"
        timing = {"clock": clock, "sleep": sleeps} if fake_time else {}
        session = Session(parse_config(yaml_text, "test.yaml"), **timing)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()
