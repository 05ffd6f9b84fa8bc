"""`mirai golden`: golden prompts through the full client, a pass/fail table and the exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kernelutil import REPO

from mirai_magics.cli import main
from mirai_magics.golden import DISABLED, load_goldens
from mirai_magics.golden_checks import check_answer, schema_errors
from mirai_magics.server import OfflineServer

KEY = "sk-test-golden-0123456789abcdef"
GOLDEN = REPO / "tests" / "golden_prompts.yaml"


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `mirai golden` runs where a user would: its own folder


def write(tmp_path: Path, entries: list[dict]) -> str:
    path = tmp_path / "golden.yaml"
    path.write_text(yaml.safe_dump(entries, allow_unicode=True))
    return str(path)


def test_the_golden_file_covers_what_it_must():
    goldens = load_goldens(GOLDEN)
    assert len(goldens) >= 10
    assert {"markdown", "code", "text", "json"} <= {g.format for g in goldens}
    assert {"reasoning", "main", "heavy", "fast", "creative"} <= {g.profile for g in goldens}
    kinds = {kind for g in goldens for kind in g.checks}
    assert kinds == {"contains", "not_contains", "regex", "json_schema", "max_output_tokens"}
    assert any("{" in g.prompt for g in goldens)  # sent literally: no interpolation


def test_golden_prompts_pass_on_the_in_process_offline_server(monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the default file is testing.golden_prompts.path, from the cwd
    assert main(["golden"]) == 0
    out = capsys.readouterr().out
    assert "golden prompts: tests/golden_prompts.yaml → in-process offline server" in out
    assert "FAIL" not in out and f"{len(load_goldens(GOLDEN))} passed, 0 failed" in out


def test_without_a_file_the_configured_path_is_used(tmp_path, capsys):
    path = write(tmp_path, [{"name": "only", "prompt": "Say OK.", "checks": {"contains": "OK"}}])
    config = tmp_path / "mirai.yaml"
    config.write_text(f"testing: {{golden_prompts: {{path: '{path}'}}}}\n")
    assert main(["golden", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"golden prompts: {path} →" in out and "1 passed, 0 failed" in out


def test_a_missing_default_file_says_where_it_was_looked_for(tmp_path, capsys):
    assert main(["golden"]) == 1  # the working directory has no tests/golden_prompts.yaml
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(
        f"mirai: no golden prompts file at {tmp_path / 'tests' / 'golden_prompts.yaml'} "
        "(testing.golden_prompts.path: 'tests/golden_prompts.yaml' in "
    )
    assert "pass the file (`mirai golden FILE`) or set testing.golden_prompts.path" in captured.err


def test_disabled_golden_prompts_are_one_line_unless_a_file_is_given(
    tmp_path, offline_server, monkeypatch, capsys
):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    config = tmp_path / "mirai.yaml"
    config.write_text("testing: {golden_prompts: {enabled: false}}\n")
    url = ["--url", offline_server.url, "--config", str(config)]
    assert main(["golden", *url]) == 0
    out = capsys.readouterr().out
    assert out == f"golden prompts are disabled ({DISABLED} in {config})\n"
    assert offline_server.stats_snapshot().requests == 0
    path = write(tmp_path, [{"name": "asked", "prompt": "Say OK.", "checks": {"contains": "OK"}}])
    assert main(["golden", path, *url]) == 0  # a file on the command line still runs
    assert "1 passed, 0 failed" in capsys.readouterr().out
    assert offline_server.stats_snapshot().requests == 1


def test_reasoning_profile_mapping_is_what_the_server_sees(offline_server, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert main(["golden", str(GOLDEN), "--url", offline_server.url]) == 0
    bodies = [r["body"] for r in offline_server.stats_snapshot()["recent"]]
    reasoning = [b for b in bodies if b["model"] == "o1-preview"]
    assert len(reasoning) == 2 and {b["max_completion_tokens"] for b in reasoning} == {256, 4096}
    assert not any({"max_tokens", "temperature", "top_p"} & set(b) for b in reasoning)
    assert any(b.get("response_format") == {"type": "json_object"} for b in bodies)
    assert KEY not in capsys.readouterr().out


def test_a_failing_check_gives_a_non_zero_exit_and_says_why(tmp_path, capsys):
    path = write(
        tmp_path,
        [
            {"name": "passes", "prompt": "Say OK.", "checks": {"contains": "OK"}},
            {
                "name": "fails",
                "prompt": "Say OK.",
                "format": "json",
                "checks": {"contains": "NOT THERE", "json_schema": {"required": ["answer"]}},
            },
        ],
    )
    assert main(["golden", path]) == 1
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" in out and "1 passed, 1 failed" in out
    assert "missing 'NOT THERE'" in out and "$: missing 'answer'" in out


def test_a_broken_file_is_one_line(tmp_path, capsys):
    path = write(tmp_path, [{"name": "x", "prompt": "y", "checks": {"contanis": "z"}}])
    assert main(["golden", path]) == 1
    assert "entry 1 (x): unknown check 'contanis'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"checks": ["contains"]}, "checks must be a mapping of check: value"),
        ({"options": ["model"]}, "options must be a mapping of option: value"),
        ({"checks": {"regex": "("}}, "regex '(' is not a valid regular expression (missing )"),
        ({"checks": {"contains": {"a": 1}}}, "contains must be a string or a list of strings"),
        ({"checks": {"max_output_tokens": True}}, "max_output_tokens must be an integer"),
        (
            {"checks": {"json_schema": {"properties": {"x": 1}}}},
            "json_schema.properties.x must be a mapping",
        ),
        ({"checks": {"json_schema": {"type": "float"}}}, "json_schema: unsupported type 'float'"),
        ({"checks": {"json_schema": {"required": "x"}}}, "json_schema.required must be a list"),
    ],
)
def test_a_malformed_entry_is_one_line_naming_the_prompt_and_key(tmp_path, capsys, entry, says):
    path = write(tmp_path, [{"name": "ok", "prompt": "y"}, {"name": "bad", "prompt": "z", **entry}])
    assert main(["golden", path]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"mirai: {path}: entry 2 (bad): ")
    assert says in captured.err and captured.err.count("\n") == 1
    assert captured.out == ""  # validated before any prompt runs


def test_record_then_replay_golden_prompts_without_network(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cassette = tmp_path / "golden.cassette.sqlite"
    with OfflineServer(vary=True).start() as srv:
        monkeypatch.setenv("MIRAI_RECORD", str(cassette))
        assert main(["golden", str(GOLDEN), "--url", srv.url]) == 0
        monkeypatch.delenv("MIRAI_RECORD")
        sent = srv.stats_snapshot().requests
        assert main(["golden", str(GOLDEN), "--url", srv.url, "--replay", str(cassette)]) == 0
        assert srv.stats_snapshot().requests == sent  # golden prompts use no memory
        new = write(tmp_path, [{"name": "new", "prompt": "never recorded", "checks": {}}])
        assert main(["golden", new, "--url", srv.url, "--replay", str(cassette)]) == 1
    assert "replay: no recording for this request" in capsys.readouterr().out


def test_json_schema_subset():
    schema = {
        "type": "object",
        "required": ["items", "kind"],
        "properties": {
            "items": {"type": "array", "items": {"type": ["integer", "null"]}},
            "kind": {"enum": ["a", "b"]},
            "score": {"type": "number"},
        },
    }
    assert schema_errors({"items": [1, None], "kind": "a", "score": 2.5}, schema) == []
    assert schema_errors({"items": [1, True, "x"], "kind": "c", "score": False}, schema) == [
        "$.items[1]: expected ['integer', 'null'], got bool",
        "$.items[2]: expected ['integer', 'null'], got str",
        "$.kind: 'c' not in ['a', 'b']",
        "$.score: expected number, got bool",
    ]
    assert schema_errors([], schema) == ["$: expected object, got list"]
    assert schema_errors({}, schema) == ["$: missing 'items'", "$: missing 'kind'"]


def test_checks():
    text = '```json\n{"a": 1}\n```'
    assert check_answer(text, 5, {"json_schema": {"type": "object"}, "max_output_tokens": 5}) == []
    assert check_answer("x", 6, {"max_output_tokens": 5, "regex": r"^\d+$"}) == [
        "no match for /^\\d+$/",
        "6 output tokens > 5",
    ]
    assert check_answer("no json", 1, {"json_schema": {}, "not_contains": ["no"]}) == [
        "contains 'no'",
        "not JSON: Expecting value",
    ]
