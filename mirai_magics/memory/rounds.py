"""The steps of one indexing round that touch the store (run on the "mirai-memory" thread).

``plan`` stores the batch's entries and finds the texts without a cached vector;
``store_vectors`` commits each embedded sub-batch as it arrives (a later failure keeps it);
``store_refusals`` remembers texts the endpoint refused; ``commit`` syncs the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..redact import redact
from .counters import CACHE_HITS, INDEXED
from .documents import CellEvent, cell_changes, embed_text
from .jobs import BACKFILL, Backfill, FileJob, Plan

BACKFILL_BATCH = 2048


def plan(memory: Any, batch: list[Any]) -> Plan:
    """Store the batch's entries; find which texts have no cached vector (nor refusal)."""
    st = memory.state()
    events = [item for item in batch if isinstance(item, CellEvent)]
    cap, secrets = memory.settings.max_output_chars, memory._secrets()
    docs, drops = cell_changes(events, cap, secrets, st.notebook)
    work = Plan(jobs=[item for item in batch if isinstance(item, FileJob)])
    st.store.upsert(list(docs.values()), memory.run, drops, st.notebook)
    for job in work.jobs:
        st.store.replace_file(job.path, job.sha, job.docs, memory.run)
    wanted = {d.sha: d.text for d in docs.values()}
    wanted.update({d.sha: d.text for job in work.jobs for d in job.docs})
    name = st.embedder.name
    cached = st.store.vectors.cached(list(wanted), name)
    refused = st.store.vectors.cached(list(wanted), name, table="failed")
    memory.counters.add(CACHE_HITS, len(cached))
    work.misses = {s: t for s, t in wanted.items() if s not in cached and s not in refused}
    memory.misses += len(work.misses)
    if memory.retry_pending or any(isinstance(item, Backfill) for item in batch):
        memory.retry_pending = False
        missing = st.store.vectors.missing(name, BACKFILL_BATCH, memory.scope_of(st.notebook))
        work.more = len(missing) == BACKFILL_BATCH
        for sha, body, output in missing:
            work.misses.setdefault(sha, embed_text(body, output))
    return work


def store_vectors(memory: Any, shas: Sequence[str], vectors: Any) -> None:
    """Cache one sub-batch's vectors."""
    st = memory.state()
    blobs = [v.astype("float32").tobytes() for v in vectors]
    st.store.vectors.put(list(shas), blobs, st.embedder.name)
    memory.counters.add(INDEXED, len(blobs))
    memory.last_error = None


def store_refusals(memory: Any, reasons: dict[str, str]) -> None:
    """Texts the endpoint refused one by one: not sent again (counted in stats)."""
    st = memory.state()
    secrets = memory._secrets()
    redacted = {sha: redact(reason, secrets) for sha, reason in reasons.items()}
    st.store.vectors.put_failures(redacted, st.embedder.name)


def commit(memory: Any, work: Plan) -> None:
    """Bring the index up to date, report finished files, queue what comes next."""
    st = memory.state()
    st.index.sync()
    memory.graph.start(st.index)  # no-op unless the exact index has outgrown the threshold
    st.index.maybe_save()
    for job in work.jobs:
        job.done(work.ok)
    if work.more and work.ok:
        memory.indexer.put(BACKFILL)  # a large backlog is embedded round by round
