"""`mirai serve` flags come from the Faults dataclass: every fault, through the real command."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from mirai_magics import cli
from mirai_magics.server import Faults, server_from_args
from mirai_magics.server.faults import FAULT_SPECS, FaultSpec

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-server-cli"
EMBED_MODEL = "text-embedding-3-small"


def serve_parser() -> argparse.ArgumentParser:
    """The `serve` subparser of the real `mirai` command line."""
    parser = cli._parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subcommands.choices["serve"]


def serve_options() -> dict[str, argparse.Action]:
    return {action.dest: action for action in serve_parser()._actions}


def sample(spec: FaultSpec) -> tuple[list[str], object]:
    """Command line words setting ``spec`` to a valid non-default value, and that value."""
    if spec.type is bool:
        return ([spec.flag], True) if not spec.optional else ([spec.flag, "false"], False)
    if spec.type is str:
        return [spec.flag, "BAD INPUT"], "BAD INPUT"
    low = spec.low if spec.low is not None else 0
    if spec.high is None:
        value = spec.type(low + 3)
    else:
        value = spec.high if spec.type is int else (low + spec.high) / 2
    return [spec.flag, str(value)], value


# -- flags derived from the dataclass ----------------------------------------------------------


def test_every_fault_field_has_a_serve_flag():
    options = serve_options()
    for f in dataclasses.fields(Faults):
        action = options.get(f.name)
        assert action is not None, f"`mirai serve` has no flag for Faults.{f.name}"
        assert action.option_strings == ["--" + f.name.replace("_", "-")]
        assert action.default == f.default
        assert action.help.startswith(f.metadata["help"].replace("%", "%%"))
    assert "--embed-max-chars" in serve_parser().format_help()


@pytest.mark.parametrize("spec", FAULT_SPECS, ids=lambda spec: spec.name)
def test_each_flag_parses_into_its_field(spec):
    words, value = sample(spec)
    assert value != spec.default
    args = cli._parser().parse_args(["serve", *words])
    faults = server_from_args(args).faults
    assert getattr(faults, spec.name) == value
    assert type(getattr(faults, spec.name)) is type(value)
    expected = dataclasses.replace(Faults(), **{spec.name: value})
    assert faults == expected  # every other field keeps its default


def test_no_flags_give_the_default_faults():
    assert server_from_args(cli._parser().parse_args(["serve"])).faults == Faults()


@pytest.mark.parametrize(
    "spec", [s for s in FAULT_SPECS if s.low is not None], ids=lambda spec: spec.name
)
def test_out_of_range_flag_fails_with_one_line(spec, capsys):
    bad = spec.low - 1 if spec.type is int else spec.low - 0.5
    assert cli.main(["serve", "--port", "0", spec.flag, str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"mirai serve: {spec.name} must be ")


@pytest.mark.parametrize("spec", FAULT_SPECS, ids=lambda spec: spec.name)
def test_bad_values_are_refused_in_one_line(spec):
    with pytest.raises(ValueError) as info:
        Faults(**{spec.name: ["not", "a\nvalue"]})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{spec.name} must be {spec.rule}, not ")


# -- the real `mirai serve` in a subprocess ----------------------------------------------------


def _announced_url(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """The base URL from the "listening on http://127.0.0.1:PORT/v1" line `mirai serve` prints."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                line = proc.stdout.readline()
                match = re.search(r"listening on (http://127\.0\.0\.1:\d+/v1)", line)
                if match:
                    return match.group(1)
                if not line:  # stdout closed: the process is exiting
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(5)
                    break
    why = proc.stderr.read() if proc.poll() is not None else "no URL printed"
    raise AssertionError(f"`mirai serve` did not start: {why}")


@contextlib.contextmanager
def mirai_serve(*flags: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`mirai serve --port 0 FLAGS` (a free loopback port); stopped whatever the test does."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirai_magics.cli", "serve", "--port", "0", *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield proc, _announced_url(proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C does: a graceful stop
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def running_faults(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/_mirai/faults", timeout=5) as resp:
        return json.loads(resp.read())["faults"]


def test_serve_embed_max_chars_refuses_longer_inputs():
    with mirai_serve("--embed-max-chars", "10") as (proc, url):
        assert running_faults(url) == Faults(embed_max_chars=10).to_dict()
        with openai.OpenAI(base_url=url, api_key=KEY, max_retries=0) as client:
            ok = client.embeddings.create(model=EMBED_MODEL, input=["x" * 10, "short"])
            assert len(ok.data) == 2
            with pytest.raises(openai.BadRequestError) as info:
                client.embeddings.create(model=EMBED_MODEL, input=["ok", "x" * 11])
    assert info.value.status_code == 400
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == "input"
    assert "maximum context length" in info.value.message
    assert proc.returncode == 0  # stopped by SIGINT, cleanly


def test_serve_embed_dims_ignores_the_width_asked_for():
    with mirai_serve("--embed-dims", "7") as (proc, url):
        assert running_faults(url) == Faults(embed_dims=7).to_dict()
        with openai.OpenAI(base_url=url, api_key=KEY, max_retries=0) as client:
            asked = client.embeddings.create(model=EMBED_MODEL, input="hello", dimensions=64)
            default = client.embeddings.create(model=EMBED_MODEL, input=["hello", "world"])
    vectors = [d.embedding for d in (*asked.data, *default.data)]
    assert [len(v) for v in vectors] == [7, 7, 7]
    assert np.allclose(np.linalg.norm(np.array(vectors), axis=1), 1.0, atol=1e-5)
    assert proc.returncode == 0
