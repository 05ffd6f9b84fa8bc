"""Fixtures for the browser tests: a slow-streaming offline server, JupyterLab and Chromium.

One JupyterLab and one browser per module; each test opens its own notebook (own kernel,
own browser context) so a picker choice or a fault never leaks into the next scenario.
Set MIRAI_SKIP_E2E=1 to skip these tests explicitly; a missing Chromium is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from labserver import REPO, Lab, start_lab

from mirai_magics.server import OfflineServer

CHROMIUM = Path(os.environ.get("MIRAI_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]
ARTIFACTS = REPO / "test-artifacts" / "e2e"
STREAM_DELAY_MS = 120  # per SSE event: an answer of ~12 events streams for ~1.5 s
FAKE_KEY = "sk-test-e2e-0123456789abcdef0123"
VIEWPORT = {"width": 1280, "height": 800}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """Keep each phase's report on the item, so fixtures can screenshot a failure."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if os.environ.get("MIRAI_SKIP_E2E") == "1":
        pytest.skip("MIRAI_SKIP_E2E=1: browser tests skipped on request")
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: the browser tests need Debian's chromium, which .ci/run "
            "should have installed (apt-get install -y chromium); set MIRAI_SKIP_E2E=1 to skip "
            "them explicitly",
            pytrace=False,
        )
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def e2e_server() -> Iterator[OfflineServer]:
    srv = OfflineServer(stream_delay_ms=STREAM_DELAY_MS).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def e2e_key() -> str:
    """The fake API key the kernels get (it must never show up on the page)."""
    return FAKE_KEY


@pytest.fixture(autouse=True)
def _fresh_server(e2e_server: OfflineServer) -> None:
    """Faults, stats and stream delay back to the module's settings before each scenario."""
    e2e_server.reset()


@pytest.fixture(scope="module")
def lab(
    chromium_path: str, e2e_server: OfflineServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    """JupyterLab whose kernels talk to ``e2e_server`` with a fake key, streaming on."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # screenshots keep their names run to run
    for stale in ARTIFACTS.glob("FAILED-*.png"):
        stale.unlink(missing_ok=True)
    env = {"MIRAI_BASE_URL": e2e_server.url, "OPENAI_API_KEY": FAKE_KEY}
    server = start_lab(tmp_path_factory.mktemp("lab"), env)
    try:
        yield server
    finally:
        server.stop()
        shutil.copyfile(server.log_path, ARTIFACTS / "jupyterlab.log")


@pytest.fixture(scope="module")
def browser(chromium_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need the playwright package (pip install playwright)")
    home = tmp_path_factory.mktemp("chromium-home")  # crash reports and caches stay in here
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    env["XDG_CACHE_HOME"] = str(home / ".cache")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS, env=env
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_notebook(
    request: pytest.FixtureRequest, browser: object, lab: Lab
) -> Iterator[Callable[..., object]]:
    """``open_notebook(name, sources)`` → a NotebookPage, closed with its kernel after the test."""
    from labpage import open_notebook as _open

    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    opened: list[object] = []

    def open_one(name: str, sources: list[str]) -> object:
        notebook = _open(context, lab, name, sources, ARTIFACTS)
        opened.append(notebook)
        return notebook

    try:
        yield open_one
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            for notebook in opened:
                notebook.screenshot(f"FAILED-{request.node.name}")
        context.close()
        for session in lab.api("/api/sessions"):
            lab.api(f"/api/sessions/{session['id']}", method="DELETE")
