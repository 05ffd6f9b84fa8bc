"""Memory building blocks that need no session: documents, chunks, embedder, index, display."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref

import numpy as np
import pytest

from mirai_magics.memory.chunks import file_docs, merge, split_lines
from mirai_magics.memory.context import Hit, context_block, snippet
from mirai_magics.memory.documents import (
    KEY_MASK,
    CellEvent,
    cell_doc,
    error_line,
    key_for,
    output_text,
    skip_reason,
)
from mirai_magics.memory.embedders import LocalEmbedder, hash_embed
from mirai_magics.memory.index import FlatIndex, HnswIndex
from mirai_magics.memory.indexer import EMBED_MAX_TOKENS, cut_to_tokens
from mirai_magics.memory.learn import find_files
from mirai_magics.tokens import count_text
from mirai_magics.ui.magics import MiraiMagics
from mirai_magics.ui.memory_cmd import bar_text, cell_finished, hit_rows


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("", "empty"),
        ("\n  \n", "empty"),
        ("x = 1  # Mirai: No-Index", "no-index"),
        ("%%markdown\n# Notes", "markdown"),
        ("%%md\ntext", "markdown"),
        ("%%mirai heavy\nExplain {df}", "mirai prompt"),
        ("%load_ext mirai_magics\n!pip list", "magics only"),
        ("# NBVAL_IGNORE_OUTPUT\n%mirai memory stats", "magics only"),
        ("%timeit f(x)\ny = f(x)", None),
        ("%%time\ny = f(x)", None),
        ("# just a note about the data", None),
        ("df = load()", None),
    ],
)
def test_skip_rules(source, reason):
    assert skip_reason(source) == reason


def test_keys_are_63_bit_and_stable():
    keys = {key_for(f"cell:{i}") for i in range(5000)}
    assert len(keys) == 5000 and max(keys) <= KEY_MASK < 2**64 - 1
    assert key_for("cell:abc") == key_for("cell:abc") != key_for("cell:abd")


def test_cell_doc_redacts_secrets_in_source_and_output():
    event = CellEvent(
        "token = 'abcdef-secret-42'\nkey = 'sk-proj-ABCDEFGHIJKLMNOP'",
        "c1",
        3,
        "'abcdef-secret-42'",
    )
    doc = cell_doc(event, 500, ["abcdef-secret-42"])
    assert doc is not None and doc.source_id == "cell:c1" and doc.label == "In[3]"
    assert "abcdef-secret-42" not in doc.text and "sk-proj-ABCDEF" not in doc.text
    assert doc.text.count("[REDACTED]") == 3


def test_output_text_keeps_errors_and_caps_length():
    assert output_text(CellEvent("x", error=error_line(KeyError("k"))), 100) == "KeyError: 'k'"
    long = output_text(CellEvent("x", output="y" * 1000), 50)
    assert len(long) == 50 and long.endswith("…")
    same = output_text(CellEvent("x", output="<Thing at 0x7f3a2b>"), 100)
    assert same == "<Thing>"  # object ids do not change the SHA between runs


def test_content_identity_without_cell_id():
    a = cell_doc(CellEvent("x = 1", None, 1), 100, [])
    b = cell_doc(CellEvent("x = 1", None, 7), 100, [])
    assert a.source_id == b.source_id and a.sha == b.sha and a.label != b.label


def test_python_files_split_at_top_level_blocks():
    text = "import os\n\n" + "\n".join(f"def f{i}():\n    return {i}\n" for i in range(3))
    pieces = split_lines(text, __import__("re").compile(r"^def "))
    assert [p.line for p in pieces] == [1, 3, 6, 9]
    assert [p.line for p in merge(pieces, target=1200)] == [1]  # small pieces merge
    cut = merge([pieces[0].__class__("\n".join(["x" * 50] * 100), 1)], limit=1000)
    assert len(cut) > 1 and all(len(p.text) <= 1000 for p in cut)


def test_file_docs_for_each_kind():
    md = file_docs("/d/a.md", "a.md", "# One\n" + "a " * 700 + "\n# Two\nb\n", [])
    assert [d.label for d in md] == ["a.md:1", "a.md:3"]
    nb = json.dumps(
        {
            "cells": [
                {"cell_type": "markdown", "source": "# Load\nintro"},
                {"cell_type": "code", "source": "rows = load()"},
                {"cell_type": "code", "source": "secret = 1  # mirai: no-index"},
            ]
        }
    )
    (doc,) = file_docs("/d/n.ipynb", "n.ipynb", nb, [])
    assert doc.body == "# Load\nrows = load()" and doc.label == "n.ipynb [cell 2]"
    assert file_docs("/d/t.txt", "t.txt", "private  # mirai: no-index", []) == []


def test_malformed_notebooks_are_a_value_error():
    for text in ["[]", '{"cells": [1, "x"]}', '{"cells": {"a": 1}}', "not json"]:
        with pytest.raises(ValueError):
            file_docs("/d/bad.ipynb", "bad.ipynb", text, [])
    odd = json.dumps({"cells": [{"cell_type": "code", "source": ["x = ", 1]}]})
    assert file_docs("/d/odd.ipynb", "odd.ipynb", odd, [])[0].body == "x = 1"


@pytest.mark.parametrize("unit", ["東京", "word ", "é", "0x5f3759df "])
def test_embedding_inputs_are_cut_by_tokens(unit):
    long = unit * 20_000
    cut = cut_to_tokens(long)
    assert long.startswith(cut) and count_text(cut)[0] <= EMBED_MAX_TOKENS
    assert count_text(cut)[0] > EMBED_MAX_TOKENS * 0.8  # not cut much further than needed
    assert cut_to_tokens("df = load()") == "df = load()"


def test_local_embedder_is_deterministic_across_processes():
    here = hash_embed("plt.hist(amounts, bins=40)", 64)
    code = (
        "from mirai_magics.memory.embedders import hash_embed;"
        "print(hash_embed('plt.hist(amounts, bins=40)', 64).tolist())"
    )
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PYTHONPATH": sys.path[0]},
    )
    assert np.allclose(here, json.loads(there.stdout))
    assert abs(float(np.linalg.norm(here)) - 1) < 1e-5


def test_local_embedder_ranks_related_text_higher():
    e = LocalEmbedder(256)
    docs = e.embed(["orders = load_orders('orders.csv')", "plt.scatter(age, spend)"])
    query = e.embed(["load the orders"])[0]
    assert docs[0] @ query > docs[1] @ query


@pytest.mark.parametrize("backend", [FlatIndex, HnswIndex])
def test_index_upsert_remove_search(backend):
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((300, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    keys = np.array([key_for(str(i)) for i in range(300)], dtype=np.int64)
    index = backend(32)
    index.upsert(keys, vecs)
    index.upsert(keys[:10], vecs[10:20])  # existing keys: replaced, not duplicated
    assert len(index) == 300
    found, scores = index.search(vecs[15], 2)
    assert set(found) == {int(keys[5]), int(keys[15])} and scores[0] == pytest.approx(1, abs=1e-2)
    index.remove([int(k) for k in keys[100:200]] + [12345])
    assert len(index) == 200
    found, _ = index.search(vecs[150], 5)
    assert int(keys[150]) not in found


def test_context_block_respects_the_token_budget():
    hits = [
        Hit(i, 0.9 - i / 10, f"In[{i}]", "cell", "x = 1\n" * 40, "", False, f"s{i}")
        for i in range(5)
    ]
    block, used = context_block(hits, 300)
    assert 1 <= used < 5 and count_text(block)[0] <= 300
    assert block.index("In[0]") < block.index("In[1]") if used > 1 else "In[0]" in block
    huge = [Hit(1, 0.8, "In[1]", "cell", "y = 2\n" * 2000, "", False, "s")]
    block, used = context_block(huge, 200)
    assert used == 1 and count_text(block)[0] <= 200 and "cut to fit" in block
    assert context_block([], 200) == ("", 0)


def test_display_helpers():
    assert bar_text("learn", 1, 4, width=8) == "learn [██░░░░░░] 1/4 files"
    assert snippet("a\n   b " + "c" * 100, 10) == "a b ccccc…"
    hit = Hit(1, 0.5, "In[2]", "cell", "df = load()", "", False, "s")
    assert hit_rows([hit]) == [("0.50", "In[2]", "df = load()")]


def test_find_files_skips_hidden_and_unsupported(tmp_path):
    (tmp_path / "a.py").write_text("x = 1")
    (tmp_path / "b.csv").write_text("1,2")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "c.md").write_text("# no")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.md").write_text("# yes")
    assert [p.name for p in find_files(str(tmp_path))] == ["a.py", "d.md"]
    assert [p.name for p in find_files(str(tmp_path / "**" / "*.md"))] == ["d.md"]
    with pytest.raises(Exception, match=r"no \.py/\.md/\.txt/\.ipynb files match"):
        find_files(str(tmp_path / "nothing*"))


class _Big:
    """Stands for a large DataFrame local to a failing function."""


def _failing_work(refs: list[weakref.ref]) -> None:
    big = _Big()
    refs.append(weakref.ref(big))
    raise ValueError("boom")


def test_backlog_keeps_error_text_not_the_exception_and_its_frames(tmp_path):
    from IPython.core.interactiveshell import ExecutionInfo, ExecutionResult, InteractiveShell

    magics = MiraiMagics(InteractiveShell.instance())  # no session yet: cells wait in a backlog
    refs: list[weakref.ref] = []
    for count in range(3):
        result = ExecutionResult(ExecutionInfo("work()", True, False, True, f"c{count}"))
        result.execution_count = count + 1
        try:
            _failing_work(refs)
        except ValueError as exc:
            result.error_in_exec = exc
        cell_finished(magics, result)
        del result
    gc.collect()
    assert [r() for r in refs] == [None, None, None]  # the frames (and `big`) are gone
    backlog = magics.__dict__["_memory_backlog"]
    assert [e.error for e in backlog] == ["ValueError: boom"] * 3
