"""A JupyterLab notebook page as a person uses it: cells to click, type into, run and read."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labserver import KERNEL_NAME, Lab
from playwright.sync_api import BrowserContext, Locator, Page, expect

EXECUTED = re.compile(r"^\s*\[\d+\]:\s*$")
KERNEL_IDLE = "Python 3 (ipykernel) | Idle"
# One read of a cell: its prompt, the text of each output, whether a badge/error is shown.
_CELL_STATE_JS = """cell => [
  cell.querySelector('.jp-InputPrompt')?.innerText ?? '',
  Array.from(cell.querySelectorAll('.jp-OutputArea-output')).map(o => o.innerText),
  cell.querySelector('.mirai-badge, .mirai-error') !== null,
]"""


def notebook_json(sources: list[str]) -> str:
    """An nbformat 4.5 notebook of code cells whose kernelspec needs no "Select Kernel" dialog."""
    cells = [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": f"cell-{i}",
            "metadata": {},
            "outputs": [],
            "source": source,
        }
        for i, source in enumerate(sources)
    ]
    kernelspec = {"name": KERNEL_NAME, "display_name": "Python 3 (ipykernel)", "language": "python"}
    metadata = {"kernelspec": kernelspec, "language_info": {"name": "python"}}
    return json.dumps({"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5})


@dataclass
class CellState:
    """What one cell showed at one moment."""

    prompt: str
    outputs: list[str]
    done: bool  # a badge or an error line is on screen


@dataclass
class NotebookPage:
    """One open notebook in its own browser context, with its screenshots folder."""

    page: Page
    artifacts: Path
    shots: list[Path] = field(default_factory=list)

    def cell(self, index: int) -> Locator:
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def cell_count(self) -> int:
        return self.page.locator(".jp-Notebook .jp-Cell").count()

    def source(self, index: int) -> str:
        return self.cell(index).locator(".cm-content").inner_text()

    def outputs(self, index: int) -> Locator:
        return self.cell(index).locator(".jp-OutputArea-output")

    def state(self, index: int) -> CellState:
        prompt, outputs, done = self.cell(index).evaluate(_CELL_STATE_JS)
        return CellState(prompt.strip(), outputs, done)

    def type_into(self, index: int, text: str) -> None:
        """Click into the cell's editor and type ``text`` key by key (newlines as Enter)."""
        self.cell(index).locator(".cm-content").click()
        self.page.keyboard.press("Control+a")
        for number, line in enumerate(text.split("\n")):
            if number:
                self.page.keyboard.press("Enter")
            self.page.keyboard.type(line)

    def start(self, index: int) -> None:
        """Click into the cell and press Shift+Enter (run and advance), without waiting."""
        self.cell(index).locator(".cm-content").click()
        self.page.keyboard.press("Shift+Enter")

    def wait_executed(self, index: int, timeout_s: float = 60) -> Locator:
        cell = self.cell(index)
        expect(cell.locator(".jp-InputPrompt")).to_have_text(EXECUTED, timeout=timeout_s * 1000)
        return cell

    def run(self, index: int, timeout_s: float = 60) -> Locator:
        """Run one cell with Shift+Enter and wait until its prompt shows an execution count."""
        self.start(index)
        return self.wait_executed(index, timeout_s)

    def watch(self, index: int, timeout_s: float = 30, on_state: Any = None) -> list[CellState]:
        """Poll the cell (~every 20 ms) until it finished; every distinct state, in order."""
        states: list[CellState] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.state(index)
            if not states or state != states[-1]:
                states.append(state)
                if on_state is not None:
                    on_state(state)
            if state.done and EXECUTED.match(state.prompt):
                return states
            time.sleep(0.02)
        raise AssertionError(f"cell {index} did not finish in {timeout_s} s; last: {states[-1:]}")

    def screenshot(self, name: str, upto: int | None = None) -> Path:
        """Save the page as ``name``.png; with ``upto``, only down to the end of that cell."""
        path = self.artifacts / f"{name}.png"
        clip = None
        if upto is not None:
            box = self.cell(upto).bounding_box()
            width = self.page.viewport_size["width"]
            clip = {"x": 0, "y": 0, "width": width, "height": box["y"] + box["height"] + 4}
        self.page.screenshot(path=str(path), clip=clip)
        self.shots.append(path)
        return path


def open_notebook(
    context: BrowserContext, lab: Lab, name: str, sources: list[str], artifacts: Path
) -> NotebookPage:
    """Write ``name``.ipynb into the Lab root, open it alone and wait for an idle kernel."""
    (lab.root / f"{name}.ipynb").write_text(notebook_json(sources))
    page = context.new_page()
    page.goto(lab.page_url(f"{name}.ipynb", workspace=name))
    # "Idle" with the kernel's name only shows once the kernel answered kernel_info.
    page.get_by_text(KERNEL_IDLE).wait_for(timeout=60_000)
    expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(len(sources))
    for close in page.locator(".Toastify__close-button").all():
        close.click()  # a news or update toast would cover the lower right corner
    return NotebookPage(page, artifacts)
