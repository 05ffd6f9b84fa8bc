"""Embedders: a local hashing embedder (no download) and the OpenAI `embed` profile.

The local embedder hashes word tokens (lightly stemmed), identifier parts (`read_csv` →
read, csv; `plotHist` → plot, hist) and character 3-grams into a signed feature vector
with sublinear term weights (each feature in two buckets), L2-normalised. It is
deterministic across processes (blake2b, never Python's salted ``hash()``) and fast
(features cached per word).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Any

import numpy as np

LOCAL_VERSION = "local-hash-v2"
KNOWN_DIMS = {
    "text-embedding-3-large": 3072,
    "text-embedding-3-small": 1536,
    "text-embedding-ada-002": 1536,
}
_WORD = re.compile(r"\w+")
_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_STOP_WORDS = (  # English function words: they weigh little and get no 3-grams
    "a an and are as at be by did do does for from how i in is it me my of on or our show "
    "that the this to was we what when where which who why with you"
)
_STOP = frozenset(_STOP_WORDS.split())
_W_WORD, _W_PART, _W_GRAM, _W_STOP = 1.0, 0.6, 0.35, 0.1
_HASHES = 2
_SUFFIXES = ("ing", "ed", "es", "s")


def stem(word: str) -> str:
    """A light suffix strip (orders → order, parsed → pars) so inflections share a feature."""
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 2 and word.endswith(suffix) and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def _hashes(feature: str) -> tuple[int, ...]:
    """Two independent 64-bit hashes: each feature lands in two buckets, so one unlucky
    collision between two heavy features moves a similarity half as much."""
    digest = hashlib.blake2b(feature.encode(), digest_size=8 * _HASHES).digest()
    return tuple(int.from_bytes(digest[8 * i : 8 * i + 8], "little") for i in range(_HASHES))


@lru_cache(maxsize=1 << 16)
def _features(token: str) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, weights) of one raw token: the word, its identifier parts, its 3-grams."""
    word = token.lower()
    if word in _STOP:
        return _arrays(["w:" + word], [_W_STOP])
    feats, weights = ["w:" + stem(word)], [_W_WORD]
    parts = [p.lower() for chunk in token.split("_") for p in _CAMEL.findall(chunk)]
    if len(parts) > 1:
        feats += ["w:" + stem(p) for p in parts]
        weights += [_W_PART] * len(parts)
    padded = f"<{word}>"
    grams = {padded[i : i + 3] for i in range(len(padded) - 2)}
    feats += ["g:" + g for g in sorted(grams)]
    weights += [_W_GRAM] * len(grams)
    return _arrays(feats, weights)


def _arrays(feats: list[str], weights: list[float]) -> tuple[np.ndarray, np.ndarray]:
    hashes = np.array([_hashes(f) for f in feats], dtype=np.uint64).reshape(-1)
    return hashes, np.repeat(np.asarray(weights) / np.sqrt(_HASHES), _HASHES)


def hash_embed(text: str, dims: int) -> np.ndarray:
    """Unit float32 vector of length ``dims`` for ``text``."""
    tokens = _WORD.findall(text)
    if not tokens:
        return np.full(dims, 1 / np.sqrt(dims), dtype=np.float32)
    pairs = [_features(t) for t in tokens]
    hashes = np.concatenate([h for h, _ in pairs])
    weights = np.concatenate([w for _, w in pairs])
    unique, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    values = weights[first] * (1.0 + np.log(counts))  # sublinear term frequency
    signs = np.where((unique >> np.uint64(63)) & np.uint64(1), -1.0, 1.0)
    vec = np.bincount((unique % np.uint64(dims)).astype(np.intp), signs * values, dims)
    norm = float(np.linalg.norm(vec))
    if norm == 0.0:
        return np.full(dims, 1 / np.sqrt(dims), dtype=np.float32)
    return (vec / norm).astype(np.float32)


class LocalEmbedder:
    """Deterministic hashing embedder; runs anywhere, needs no network or download."""

    remote = False

    def __init__(self, dims: int = 256):
        self.dims = dims
        self.name = f"{LOCAL_VERSION}/{dims}"

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dims), dtype=np.float32)
        return np.stack([hash_embed(t, self.dims) for t in texts])

    def __repr__(self) -> str:
        return f"<LocalEmbedder {self.name}>"


class OpenAIEmbedder:
    """The `embed` profile through the session's resilient client (background priority)."""

    remote = True

    def __init__(self, model: str, dims: int, profile: str = "embed"):
        self.model, self.dims, self.profile = model, dims, profile
        self.name = f"openai/{model}/{dims}"

    async def embed_async(self, client: Any, texts: list[str], background: bool) -> np.ndarray:
        vectors, _record = await client.embed(texts, self.profile, background=background)
        return normalise(checked_matrix(vectors, len(texts), self.dims, self.model))

    def __repr__(self) -> str:
        return f"<OpenAIEmbedder {self.name}>"


def checked_matrix(vectors: Any, count: int, dims: int, model: str) -> np.ndarray:
    """The endpoint's vectors as a (count, dims) matrix; another width is a config error
    (an endpoint that ignores ``dimensions`` must not fill the cache with the wrong size)."""
    widths = sorted({len(v) for v in vectors})
    if widths and widths != [dims]:
        from ..errors import ConfigError

        raise ConfigError(
            f"{model} returned {'/'.join(map(str, widths))}-dimensional vectors, {dims} expected",
            hint=f"set models.embed.dimensions: {widths[-1]}, then `%mirai reload` and "
            "`%mirai memory rebuild`",
        )
    return np.asarray(vectors, dtype=np.float32).reshape(count, dims)


def normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (matrix / norms).astype(np.float32)


def choose_embedder(config: Any, offline: bool) -> LocalEmbedder | OpenAIEmbedder:
    """`auto`: OpenAI embeddings when the session talks to a real endpoint, else local."""
    rag = config.context.rag
    choice = rag.embedder
    if choice == "local" or (choice == "auto" and offline):
        return LocalEmbedder(rag.local_dims)
    profile = config.profile("embed")
    dims = profile.dimensions or KNOWN_DIMS.get(profile.name)
    if dims is None:
        from ..errors import ConfigError

        raise ConfigError(
            f"models.embed: dimensions unknown for model {profile.name!r}",
            hint="set models.embed.dimensions, or context.rag.embedder: local",
        )
    return OpenAIEmbedder(profile.name, dims)
