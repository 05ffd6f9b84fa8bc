"""`%mirai memory forget|rebuild|stats`: administration of a NotebookMemory.

`forget all` also recovers from an unreadable ``memory.sqlite``: the file is moved aside
as ``memory.sqlite.corrupt-<time>`` (never deleted) and the memory starts empty.
"""

from __future__ import annotations

from typing import Any

from ..errors import MemoryCorruptError, UsageError
from .index import sidecar_path
from .indexer import index_wait_s
from .jobs import BACKFILL
from .store import move_aside


def forget(memory: Any, target: str) -> str:
    """Forget ``all`` or the cells run as In[N] (this kernel's, else an earlier run's of
    this notebook, or with folder scope of any notebook)."""
    if target == "all":
        return forget_all(memory)
    if not target.isdigit():
        raise UsageError(f"forget what? got {target!r}", hint="use `forget N` or `forget all`")
    st = memory.state()
    memory.flush(index_wait_s())
    where = "kind = 'cell' AND count = ?"
    keys = st.store.keys_for(f"{where} AND run = ?", (int(target), memory.run))
    scope = memory.scope_of(st.notebook)
    if not keys and scope is None:
        keys = st.store.keys_for(where, (int(target),))
    elif not keys:
        marks = ",".join("?" * len(scope))
        keys = st.store.keys_for(f"{where} AND notebook IN ({marks})", (int(target), *scope))
    n = st.store.delete_keys(keys) if keys else 0
    st.index.sync()
    return forgot(n)


def forget_all(memory: Any) -> str:
    """Empty the memory; an unreadable database is moved aside and a new one started."""
    try:
        st = memory.state()
        memory.flush(index_wait_s())
        n = st.store.clear()
    except MemoryCorruptError as exc:
        return start_over(memory, exc)
    st.index.drop_cache()
    st.index.rebuild("cleared by `%mirai memory forget all`")
    return forgot(n)


def start_over(memory: Any, exc: MemoryCorruptError) -> str:
    """Move the unreadable database (and its -wal) aside, drop the index cache, open anew."""
    memory.discard_state()
    moved = move_aside(exc.path)
    cache = exc.path.with_name("memory.usearch")
    for path in (cache, sidecar_path(cache)):
        path.unlink(missing_ok=True)  # built from the unreadable file: a cache, not data
    memory.state()
    memory.last_error = None
    return f"{exc.path.name} was unreadable: moved to {moved.name}; the memory starts empty"


def forgot(n: int) -> str:
    return f"forgot {n} entr{'y' if n == 1 else 'ies'}"


def rebuild(memory: Any) -> str:
    """Re-read the config's embedder, rebuild the index from SQLite, embed what is missing
    (texts the endpoint refused before are tried again)."""
    memory.flush(index_wait_s())
    old = memory.state()
    old.store.vectors.clear_failures()
    old.store.new_epoch()
    old.index.drop_cache()
    memory.discard_state()
    st = memory.state()
    memory.indexer.suspects.clear()
    memory.indexer.put(BACKFILL)
    return st.index.describe()


def stats_rows(memory: Any) -> list[tuple[str, str]]:
    """`%mirai memory stats` rows (waits briefly for cells still being indexed)."""
    from .stats import stats_rows as rows

    state = memory.state()  # opening may queue a backfill: wait for it too
    memory.flush(index_wait_s())
    return rows(memory, state)
