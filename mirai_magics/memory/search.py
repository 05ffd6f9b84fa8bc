"""Searching the memory: the query's vector, the keys in scope, and the hits they give.

A query is embedded once per text and embedder: its vector is kept in this kernel (the last
QUERY_CACHE) and, for a remote embedder, in the store's ``queries`` table, so a prompt or a
search repeated in a new kernel makes no embedding request. With ``context.rag.scope:
notebook`` a search sees this notebook's cells and the learned files; with ``folder`` (or
``--all``) every entry of the memory directory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..redact import redact
from .context import Hit, pick_hits
from .documents import sha256
from .identity import own_identities

QUERY_CACHE = 128
QUERY_CHARS = 8000


class Searcher:
    """One memory's search state: recent query vectors and the keys of its scope."""

    def __init__(self, memory: Any):
        self.memory = memory
        self.queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._stamp: Any = None  # (generation, epoch, notebooks) the allowed keys are for
        self._allowed = np.empty(0, dtype=np.int64)

    def clear(self) -> None:
        self.queries.clear()
        self._stamp = None

    def search(
        self,
        query: str,
        k: int,
        min_score: float | None = None,
        exclude: Iterable[str] = (),
        everywhere: bool = False,
    ) -> list[Hit]:
        """The ``k`` hits nearest ``query`` in scope, best first (``exclude``: own sources)."""
        st = self.memory.state()
        excluded = set(exclude)
        own = own_identities(st.notebook)
        scope = None if everywhere else self.memory.scope_of(st.notebook)
        allowed = None if scope is None else self.allowed(st, scope)
        wanted = 2 * k + len(excluded) + 4  # room for the excluded and for repeated texts
        keys, scores = st.index.search(self.vector(query), wanted, allowed)
        rows = st.store.rows(keys)
        return pick_hits(zip(keys, scores, strict=True), rows, own, excluded, min_score, k)

    def allowed(self, st: Any, notebooks: tuple[str, ...]) -> np.ndarray:
        """Sorted keys of ``notebooks``' cells and the learned files (kept per generation)."""
        stamp = (*st.store.generation(), notebooks)
        if self._stamp != stamp:
            self._allowed = np.asarray(sorted(st.store.visible_keys(notebooks)), dtype=np.int64)
            self._stamp = stamp
        return self._allowed

    def vector(self, query: str) -> np.ndarray:
        """The query's unit vector: from this kernel, the store, or the embedder."""
        st = self.memory.state()
        text = redact(query, self.memory._secrets())[:QUERY_CHARS]
        if text in self.queries:
            self.queries.move_to_end(text)
            return self.queries[text]
        vector = self._stored(st, text) if st.embedder.remote else None
        if vector is None:
            vector = self._embed(st, text)
        self.queries[text] = vector
        while len(self.queries) > QUERY_CACHE:
            self.queries.popitem(last=False)
        return vector

    def _stored(self, st: Any, text: str) -> np.ndarray | None:
        blob = st.store.vectors.query(sha256(text), st.embedder.name)
        if blob is None or len(blob) != st.embedder.dims * 4:
            return None
        return np.frombuffer(blob, dtype=np.float32)

    def _embed(self, st: Any, text: str) -> np.ndarray:
        if not st.embedder.remote:
            return st.embedder.embed([text])[0]
        session = self.memory.session
        vector = session.engine.run(st.embedder.embed_async(session.client, [text], False))[0]
        blob = np.asarray(vector, dtype=np.float32).tobytes()
        st.store.vectors.put_query(sha256(text), blob, st.embedder.name)
        return vector
