"""`%mirai memory learn PATH_OR_GLOB`: index files in chunks, re-learning only changed ones."""

from __future__ import annotations

import glob
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..text import clip
from .chunks import SUFFIXES, file_docs
from .documents import sha256
from .jobs import FileJob

_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}


@dataclass
class LearnReport:
    """What a learn run did, for the one-line summary."""

    files: int = 0
    changed: int = 0
    unchanged: int = 0
    chunks: int = 0
    failed: int = 0
    skipped: list[str] = field(default_factory=list)  # "bad.ipynb (why)": files not read

    def summary(self) -> str:
        text = (
            f"learned {self.changed} file{'s' if self.changed != 1 else ''} "
            f"({self.chunks} chunk{'s' if self.chunks != 1 else ''}), "
            f"{self.unchanged} unchanged"
        )
        indexed = self.failed - len(self.skipped)
        if self.skipped:
            text += f"; skipped {', '.join(self.skipped[:3])}"
            text += f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
        if indexed:
            text += f"; {indexed} not indexed (see `%mirai memory stats`)"
        return text


def find_files(pattern: str) -> list[Path]:
    """Files named by a path, a directory (recursively) or a glob (`**` allowed)."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        candidates = list(path.rglob("*"))
    elif glob.has_magic(pattern):
        candidates = [Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True)]
    else:
        candidates = [path] if path.exists() else []
    found = {
        p.resolve()
        for p in candidates
        if p.is_file() and p.suffix in SUFFIXES and not _hidden(p, path)
    }
    if not found:
        raise UsageError(
            f"no {'/'.join(SUFFIXES)} files match {pattern!r}",
            hint="give a file, a directory or a glob such as 'docs/**/*.md'",
        )
    return sorted(found)


def _hidden(path: Path, root: Path) -> bool:
    """Inside a hidden or cache directory below the given root (.git, .mirai, checkpoints)."""
    try:
        parts = path.relative_to(root).parts[:-1] if root.is_dir() else ()
    except ValueError:
        parts = path.parts[:-1]
    return any(p.startswith(".") or p in _SKIP_DIRS for p in parts)


def label_for(path: Path) -> str:
    """The path as the user knows it: relative to the working directory when inside it."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


class _Finished:
    def __init__(self) -> None:
        self.count = self.failed = 0
        self.changed = threading.Condition()

    def __call__(self, ok: bool) -> None:
        with self.changed:
            self.count += 1
            self.failed += 0 if ok else 1
            self.changed.notify_all()


def learn_files(memory: Any, pattern: str, progress: Callable[[int, int], None]) -> LearnReport:
    """Chunk every changed file, queue it, and report progress until all are indexed."""
    files = find_files(pattern)
    state = memory.state()
    secrets = memory._secrets()
    report, finished, queued = LearnReport(files=len(files)), _Finished(), 0
    progress(0, len(files))
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
            sha = sha256(text)
            if state.store.file_sha(str(path)) == sha:
                report.unchanged += 1
                continue
            docs = file_docs(str(path), label_for(path), text, secrets)
        except (OSError, ValueError) as exc:  # unreadable file, or JSON that is no notebook
            report.skipped.append(f"{label_for(path)} ({_reason(exc)})")
            report.failed += 1
            continue
        report.changed += 1
        report.chunks += len(docs)
        memory.indexer.put(FileJob(str(path), sha, docs, finished))
        queued += 1
    _wait(memory, finished, queued, lambda n: progress(n, len(files)), len(files) - queued)
    report.failed += finished.failed
    progress(len(files), len(files))
    return report


def _reason(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return clip(text, 80)


def _wait(memory: Any, finished: _Finished, queued: int, show: Any, already: int) -> None:
    with finished.changed:
        while finished.count < queued and not memory.indexer.closed:
            show(already + finished.count)
            finished.changed.wait(0.1)
