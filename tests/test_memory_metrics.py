"""The memory's Prometheus counters hold the real counts: entries embedded and stored (rows
in ``memory.sqlite``), embeddings reused from the SHA-256 cache, searches run for prompts."""

from __future__ import annotations

import sqlite3

import pytest
from prometheus_client import generate_latest

from mirai_magics.config import parse_config
from mirai_magics.memory import NotebookMemory
from mirai_magics.session import Session
from mirai_magics.telemetry import Telemetry

KEY = "sk-test-memmetrics-0123456789abcdef"
CELLS = [
    ("import csv\nrows = list(csv.DictReader(open('sales_2023.csv')))\nlen(rows)", "1200"),
    ("def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b", ""),
    ("import matplotlib.pyplot as plt\nplt.hist(amounts, bins=40)", ""),
]


@pytest.fixture
def make_session(shared_offline_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    shared_offline_server.reset()
    sessions: list[Session] = []

    def make(embedder: str) -> Session:
        yaml = f"endpoint: {{base_url: '{shared_offline_server.url}'}}\n"
        yaml += f"context: {{rag: {{embedder: {embedder}}}}}"
        session = Session(parse_config(yaml, "test.yaml"))
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


def run_cells(memory: NotebookMemory, cells: list[tuple[str, str]], start: int = 1) -> None:
    for n, (source, output) in enumerate(cells, start=start):
        memory.add_cell(source, count=n, output=output)
    assert memory.flush(30)


def scraped(registry: object) -> dict[str, float]:
    """The memory counters as the exposition text shows them."""
    lines = generate_latest(registry).decode().splitlines()
    pairs = (line.split() for line in lines if line.startswith("mirai_memory_"))
    return {name: float(value) for name, value in pairs if name.endswith("_total")}


def stored_vectors(memory: NotebookMemory) -> int:
    with sqlite3.connect(memory.state().home / "memory.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]


def test_session_registry_counts_embedded_reused_and_searched(make_session):
    session = make_session("openai")  # embedded over HTTP by the offline server
    memory = session.memory
    assert session.client is not None  # the session's telemetry exists once its client does
    memory.counters.attach(session.telemetry)  # Session's wiring (a no-op once Session does it)
    run_cells(memory, CELLS)
    run_cells(memory, CELLS[:2], start=10)  # run again unchanged: both vectors reused
    for question in ("how did we load the sales data?", "how is fibonacci computed?"):
        memory.prompt_context(question, None)
    assert memory.prompt_context("no memory for this one", 0) == ("", [])  # -k 0: no search
    assert stored_vectors(memory) == len(CELLS)
    assert scraped(session.telemetry.metrics.registry) == {
        "mirai_memory_indexed_total": len(CELLS),
        "mirai_memory_cache_hits_total": 2,
        "mirai_memory_searches_total": 2,
    }


def test_counts_made_before_the_registry_exists_are_handed_over(make_session):
    session = make_session("local")
    memory = NotebookMemory(session)  # no metrics: it counts for itself alone
    try:
        run_cells(memory, CELLS[:2])
        run_cells(memory, CELLS[:1], start=5)
        memory.prompt_context("which cell loads the csv?", None)
        telemetry = Telemetry(session.config)  # the registry comes later
        memory.counters.attach(telemetry)
        memory.counters.attach(telemetry)  # attaching twice counts nothing twice
        run_cells(memory, CELLS[2:], start=7)
        memory.prompt_context("where is the histogram?", None)
        assert scraped(telemetry.metrics.registry) == {
            "mirai_memory_indexed_total": 3,
            "mirai_memory_cache_hits_total": 1,
            "mirai_memory_searches_total": 2,
        }
        assert stored_vectors(memory) == 3
    finally:
        memory.close()
