"""Deterministic offline embeddings: hashed bag of words and character 3-grams, L2-normalised.

Stable across processes (blake2b for words, a splitmix64 mix for 3-grams; never
Python's salted ``hash()``), fast (numpy, cached word hashes) and similar texts
share features, so their cosine similarity is higher than that of unrelated texts.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from functools import lru_cache

import numpy as np

DEFAULT_DIMENSIONS = {
    "text-embedding-3-large": 3072,
    "text-embedding-3-small": 1536,
    "text-embedding-ada-002": 1536,
}
FALLBACK_DIMENSIONS = 256
MAX_DIMENSIONS = 16384

_WORD = re.compile(r"\w+")
_WORD_WEIGHT = 1.0
_TRIGRAM_WEIGHT = 0.5
_TRIGRAM_SALT = np.uint64(0x6D6972616931)  # "mirai1"
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S32 = (np.uint64(s) for s in (30, 27, 31, 32))
_S21, _S42 = np.uint64(21), np.uint64(42)


def default_dimensions(model: str) -> int:
    return DEFAULT_DIMENSIONS.get(model, FALLBACK_DIMENSIONS)


@lru_cache(maxsize=1 << 17)
def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> _S30)
    x = x * _M1
    x = x ^ (x >> _S27)
    x = x * _M2
    return x ^ (x >> _S31)


def _trigram_hashes(words: list[str]) -> np.ndarray:
    text = " " + " ".join(words) + " "
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if codes.size < 3:
        return np.empty(0, dtype=np.uint64)
    keys = (codes[:-2] << _S42) | (codes[1:-1] << _S21) | codes[2:]
    return _mix(keys ^ _TRIGRAM_SALT)


def _accumulate(hashes: np.ndarray, weight: float, dims: int) -> np.ndarray:
    index = (hashes % np.uint64(dims)).astype(np.intp)
    signs = np.where((hashes >> _S32) & np.uint64(1), weight, -weight)
    return np.bincount(index, weights=signs, minlength=dims)


def _fixed_vector(dims: int) -> np.ndarray:
    return np.full(dims, 1.0 / math.sqrt(dims), dtype=np.float32)


def embed_text(text: str, dims: int) -> np.ndarray:
    """Unit float32 vector of length ``dims`` for ``text``."""
    words = _WORD.findall(text.lower())
    if not words:
        return _fixed_vector(dims)
    word_hashes = np.array([_word_hash(w) for w in words], dtype=np.uint64)
    vec = _accumulate(word_hashes, _WORD_WEIGHT, dims)
    vec += _accumulate(_trigram_hashes(words), _TRIGRAM_WEIGHT, dims)
    norm = float(np.linalg.norm(vec))
    if norm == 0.0:
        return _fixed_vector(dims)
    return (vec / norm).astype(np.float32)


def embed(texts: list[str], dims: int) -> np.ndarray:
    """Matrix (len(texts), dims) of unit float32 vectors."""
    if not texts:
        return np.empty((0, dims), dtype=np.float32)
    return np.stack([embed_text(t, dims) for t in texts])


def encode_vector(vec: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
    return vec.astype(np.float32).tolist()


def embedding_tokens(texts: list[str]) -> int:
    return sum(math.ceil(len(t) / 4) for t in texts)


def embeddings_object(texts: list[str], model: str, dims: int, encoding_format: str) -> dict:
    vectors = embed(texts, dims)
    data = [
        {"object": "embedding", "index": i, "embedding": encode_vector(vec, encoding_format)}
        for i, vec in enumerate(vectors)
    ]
    tokens = embedding_tokens(texts)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
