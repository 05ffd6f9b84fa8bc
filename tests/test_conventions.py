"""Notebook conventions: the picker, `%config MiraiMagics.*`, strict mode, rich results,
answer metadata, `%mirai fix` and a busy metrics port — most of them in a real kernel."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request

import nbformat
import pytest
from kernelutil import Kernel, kernel_fixtures, server_kernel_env
from markers import needs_genai_prices

from mirai_magics.client.records import CallRecord
from mirai_magics.config import parse_config
from mirai_magics.telemetry.metrics import ENV_PORT, busy_notice
from mirai_magics.ui.defaults import CellDefaults
from mirai_magics.ui.fix import FailedCell, fix_prompt, format_error
from mirai_magics.ui.render import answer_metadata
from mirai_magics.ui.widgets import model_picker

CONFIG = parse_config("", "test.yaml")
KEY = "sk-test-conventions-0123456789abcdef"
NO_MEMORY = "context: {rag: {enabled: false}}\ndefaults: {max_retries: 1}\n"
MAGICS = "get_ipython().magics_manager.registry['MiraiMagics']"


# --- the picker ------------------------------------------------------------------------------


def picker():
    defaults = CellDefaults()
    dropdown, slider, tokens, summary = model_picker(CONFIG, defaults).children
    return defaults, dropdown, slider, tokens, summary


def test_the_picker_loads_each_profiles_values_except_a_field_the_user_changed():
    defaults, dropdown, slider, tokens, summary = picker()
    tokens.value = 300  # the user's own cap
    dropdown.value = "heavy"
    assert "heavy/gpt-4o, T=0.25, max_tokens=300</code>" in summary.value  # heavy's T, own cap
    assert defaults == CellDefaults("heavy", {"max_tokens": 300})  # only the changed field
    slider.value = 0.9
    dropdown.value = "creative"  # capped at creative's max_temperature 0.4, not forgotten
    assert "creative/gpt-4o, T=0.40, max_tokens=300</code>" in summary.value
    assert defaults.overrides == {"temperature": 0.4, "max_tokens": 300}
    dropdown.value = "main"
    assert (slider.value, slider.max) == (0.9, 1.0)
    assert "main/gpt-4o-mini, T=0.90, max_tokens=300</code>" in summary.value


def test_an_untouched_picker_sends_the_profiles_own_values_as_no_overrides():
    defaults, dropdown, _slider, tokens, summary = picker()
    for name, cap in (("heavy", 2500), ("fast", 1200), ("main", 2000)):
        dropdown.value = name
        assert tokens.value == cap and f"max_tokens={cap}</code>" in summary.value
        assert defaults == CellDefaults(name, {})  # a fallback hop keeps its own values


def test_a_reasoning_profile_hides_the_temperature_instead_of_a_stale_value():
    defaults, dropdown, slider, _tokens, summary = picker()
    slider.value = 0.6
    dropdown.value = "reasoning"
    assert slider.layout.display == "none"
    assert "reasoning/o1-preview, T=–, max_tokens=4096</code>" in summary.value
    assert defaults == CellDefaults("reasoning", {})  # no temperature for o1-class models
    dropdown.value = "main"
    assert slider.layout.display is None and slider.value == 0.6


def test_the_picker_labels_have_room_for_their_words():
    _defaults, dropdown, slider, tokens, _summary = picker()
    widths = {w.style.description_width for w in (dropdown, slider, tokens)}
    assert widths == {"7.5em"}  # "temperature" is 11 characters: ~6.5em at the widget font


# --- metadata, fix prompt, metrics notice (pure parts) --------------------------------------


@needs_genai_prices
def test_answer_metadata_names_the_call_and_prices_it():
    record = CallRecord("heavy", "gpt-4o-2024-08-06", tokens_in=1000, tokens_out=500)
    facts = answer_metadata(record, CONFIG.pricing)["mirai"]
    assert facts == {
        "call_id": record.id,
        "profile": "heavy",
        "model": "gpt-4o-2024-08-06",
        "tokens_in": 1000,
        "tokens_out": 500,
        "cost": pytest.approx((1000 * 2.50 + 500 * 10.00) / 1e6),  # gpt-4o's price per 1M
    }
    record.offline = True
    assert answer_metadata(record, CONFIG.pricing)["mirai"]["cost"] is None


def test_a_traceback_names_cells_not_the_kernels_temporary_files():
    def broken():
        return undefined_thing  # noqa: F821

    try:
        broken()
    except NameError as exc:
        error = exc
    here = __file__

    def name_of(filename: str) -> str:
        return "Cell In[7]" if filename == here else filename

    text = format_error(error, name_of)
    assert "  Cell In[7], line " in text and ", in broken\n" in text
    assert here not in text and "return undefined_thing" in text
    prompt = fix_prompt(FailedCell(7, "broken()", "cell-7", text))
    assert "In[7] raised" in prompt and "```python\nbroken()\n```" in prompt


def test_a_busy_port_notice_names_the_setting_the_port_came_from(monkeypatch):
    busy = OSError(98, "Address already in use")
    busy.errno = 98
    monkeypatch.setenv(ENV_PORT, "9090")
    assert busy_notice(9090, busy) == (
        "port 9090 is busy (Address already in use): set MIRAI_METRICS_PORT "
        "or run %mirai metrics --port 0"
    )
    monkeypatch.delenv(ENV_PORT)
    assert "set observability.metrics.port or" in busy_notice(9090, busy)


# --- in a kernel -------------------------------------------------------------------------------


server, kernel = kernel_fixtures("conventions", NO_MEMORY, KEY)


@pytest.fixture
def fresh(server, kernel):
    server.reset()
    kernel.run(
        "%mirai reset\n%mirai use main\n%config MiraiMagics.raise_on_error = False\n"
        "%config MiraiMagics.default_format = None\n%config MiraiMagics.stream = None"
    )
    return kernel


def last_body(server) -> dict:
    return server.stats_snapshot()["recent"][-1]["body"]


def plain(execution) -> list[str]:
    return execution.data("text/plain")


@pytest.mark.kernel
def test_config_settings_apply_from_the_next_cell(fresh, server, tmp_path):
    kernel = fresh
    kernel.run("%config MiraiMagics.default_profile = 'fast'")
    kernel.run("%%mirai\nwho answers?")
    assert last_body(server)["model"] == "gpt-3.5-turbo"
    kernel.run("%mirai use heavy")  # `%mirai use` and %config agree, so %config applies again
    assert kernel.run(f"print({MAGICS}.default_profile)").text.strip() == "heavy"
    kernel.run("%config MiraiMagics.default_profile = 'fast'")
    kernel.run("%%mirai\nand now?")
    assert last_body(server)["model"] == "gpt-3.5-turbo"
    refused = kernel.run("%config MiraiMagics.default_profile = 'nope'")
    assert plain(refused) == [
        "[mirai] ✗ unknown profile 'nope' — use one of: main, heavy, fast, creative, reasoning, "
        "or auto (routing picks main, heavy or fast per cell)"
    ]
    assert kernel.run(f"print({MAGICS}.default_profile)").text.strip() == "fast"
    kernel.run("%%mirai\nstill fast?")
    sent = last_body(server)
    assert (sent["messages"][-1]["content"], sent["model"]) == ("still fast?", "gpt-3.5-turbo")

    kernel.run("%config MiraiMagics.default_format = 'text'")
    shown = kernel.run("%%mirai\nplain please")
    assert shown.data("text/markdown") == []  # text, not rendered markdown
    kernel.run("%config MiraiMagics.stream = True")  # over MIRAI_STREAM=0 of this kernel
    streamed = kernel.run("%%mirai\nstream please")
    assert streamed.of_type("update_display_data") and last_body(server)["stream"] is True
    once = kernel.run("%%mirai --no-stream\nnot this one")  # the cell's own option wins
    assert once.of_type("update_display_data") == [] and not last_body(server).get("stream")

    other = tmp_path / "other.yaml"
    other.write_text(NO_MEMORY + "models: {fast: {max_tokens: 77}}\n")
    kernel.run(f"%config MiraiMagics.config_path = {str(other)!r}")  # no %mirai reload
    kernel.run("%%mirai\nwith the other file")
    assert last_body(server)["max_tokens"] == 77
    kernel.run("%config MiraiMagics.config_path = None")  # back to the kernel's own config
    kernel.run("%%mirai\nwith the default file")
    assert last_body(server)["max_tokens"] != 77
    bad = kernel.run(f"%config MiraiMagics.config_path = {str(tmp_path / 'nope.yaml')!r}")
    assert len(plain(bad)) == 1 and plain(bad)[0].startswith("[mirai] ✗ ")
    assert kernel.run(f"print({MAGICS}.config_path)").text.strip() == "None"  # reverted
    assert "config and API key re-read" in kernel.run("%mirai reload").text  # still works
    kernel.run("%config MiraiMagics.default_profile = None")


@pytest.mark.kernel
def test_config_lists_the_settings_with_their_help(fresh):
    page = fresh.run("%config MiraiMagics").text
    for name in ("default_profile", "default_format", "stream", "memory_enabled"):
        assert f"MiraiMagics.{name}" in page
    assert "MiraiMagics.raise_on_error" in page and "MIRAI_STRICT=1" in page
    assert "MiraiMagics.config_path" in page and "re-reads it at once" in page


@pytest.mark.kernel
def test_line_commands_return_rich_results_that_are_plain_data(fresh):
    kernel = fresh
    kernel.run("%%mirai\nfirst question")
    kept = kernel.run("s = %mirai status")
    assert kept.of_type("display_data", "execute_result") == []  # kept, not shown
    kept = kernel.run("print(isinstance(s, dict), s['default profile'], int(s['calls']) > 0)")
    assert kept.text.split() == ["True", "main", "True"]
    shown = kernel.run("%mirai status")
    result = shown.of_type("execute_result")[0]["content"]["data"]
    assert "<table class='mirai-status'>" in result["text/html"]
    assert result["text/plain"].startswith("mirai status\nendpoint ")
    code = (
        "calls = %mirai log\nhistory = %mirai history\njobs = %mirai jobs\n"
        "print(json.dumps([calls[-1]['model'], [m['role'] for m in history], list(jobs)]))"
    )
    kernel.run("import json")
    seen = json.loads(kernel.run(code).text)
    assert seen == ["gpt-4o-mini", ["user", "assistant"], []]
    log = kernel.run("%mirai log").of_type("execute_result")[0]["content"]["data"]
    assert (
        "<table class='mirai-table'>" in log["text/html"]
        and "main/gpt-4o-mini" in log["text/plain"]
    )
    reply = kernel.run("_mirai").of_type("execute_result")[0]["content"]["data"]
    assert reply["text/markdown"].startswith("**Offline answer**")
    assert reply["text/plain"].startswith("Reply(") and "main/gpt-4o-mini" in reply["text/plain"]


@pytest.mark.kernel
def test_an_empty_history_says_so_in_one_line(fresh):
    shown = fresh.run("%mirai history")
    assert plain(shown) == ["history: empty (the next %%mirai cell sends no earlier turns)"]


@pytest.mark.kernel
def test_format_json_out_stores_the_parsed_value(fresh):
    kernel = fresh
    kernel.run("%%mirai --format json --out facts --no-history\nGive facts as JSON.")
    assert kernel.run("print(type(facts).__name__, facts['offline'])").text.split() == [
        "dict",
        "True",
    ]
    assert kernel.run("print(_mirai.data == facts)").text.strip() == "True"
    cut = kernel.run("%%mirai --format json --out half --max-tokens 4 --no-history\nAgain.")
    assert any(t.startswith("[mirai] ✗ invalid JSON from the model") for t in plain(cut))
    assert kernel.run("print('half' in dir())").text.strip() == "False"  # never half a string


@needs_genai_prices
@pytest.mark.kernel
def test_every_answer_display_carries_its_call_metadata(fresh, server):
    kernel = fresh
    shown = kernel.run("%%mirai heavy\nWho made this output?")
    answer, badge = shown.of_type("display_data")
    facts = answer["content"]["metadata"]["mirai"]
    call_id = kernel.run("print(_mirai.record.id)").text.strip()
    usage = server.stats_snapshot()["recent"][-1]
    assert facts["call_id"] == call_id and facts["profile"] == "heavy"
    assert facts["model"] == "gpt-4o" and facts["tokens_in"] > 0 and facts["tokens_out"] > 0
    assert facts["cost"] > 0  # a keyed session is priced (genai-prices), on this server too
    assert badge["content"]["metadata"] == answer["content"]["metadata"]
    assert usage["body"]["model"] == "gpt-4o"
    streamed = kernel.run("%%mirai --stream\nAnd streamed?")
    final = streamed.of_type("update_display_data")[-1]["content"]
    assert final["metadata"]["mirai"]["call_id"] != call_id


@pytest.mark.kernel
def test_fix_sends_cell_frames_and_no_copy_of_the_failing_cell(server, tmp_path):
    every_cell_hits = "context: {rag: {min_score: -1.0, top_k: 4}}\n"
    env = server_kernel_env(server.url, tmp_path, every_cell_hits, KEY)
    with Kernel(tmp_path, env) as kernel:
        kernel.run("%load_ext mirai_magics")
        kernel.run("def loader():\n    return undefined_thing  # the helper")
        kernel.run("rows = loader()  # the failing cell", allow_error=True)
        # a loaded CI machine may need more than the 5 s a cell waits for the index
        wait = "# mirai: no-index\nfrom mirai_magics.api import current_session as s\n"
        wait += "print(s().memory.flush(60))"
        assert kernel.run(wait).text.strip() == "True"
        server.reset()
        shown = kernel.run("%mirai fix")
        messages = last_body(server)["messages"]
    memory = [m["content"] for m in messages if "Earlier cells" in str(m["content"])]
    prompt = messages[-1]["content"]
    assert "Cell In[3], line 1, in <module>" in prompt and "Cell In[2], line 2, in loader" in prompt
    assert "ipykernel" not in prompt and "/tmp/" not in prompt
    assert "```python\nrows = loader()  # the failing cell\n```" in prompt
    assert len(memory) == 1 and "return undefined_thing  # the helper" in memory[0]
    assert "the failing cell" not in memory[0]  # the prompt has it; memory does not repeat it
    assert any("memory: 1 cell" in t for t in plain(shown))


@pytest.mark.kernel
def test_a_busy_metrics_port_is_one_notice_and_port_0_picks_a_free_one(server, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = server_kernel_env(server.url, tmp_path, NO_MEMORY, KEY)
        env[ENV_PORT] = str(port)
        with Kernel(tmp_path, env) as kernel:
            kernel.run("%load_ext mirai_magics")
            first = plain(kernel.run("%%mirai\nhello"))
            second = plain(kernel.run("%%mirai\nagain"))
            moved = kernel.run("%mirai metrics --port 0").text
            bound = int(moved.split("127.0.0.1:")[1].split("/")[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{bound}/metrics", timeout=5) as r:
                scraped = r.read().decode()
    notice = (
        f"metrics off: port {port} is busy (Address already in use): set MIRAI_METRICS_PORT "
        "or run %mirai metrics --port 0"
    )
    assert first[-1] == notice and notice not in second
    assert bound not in (0, port) and moved.startswith(
        f"Prometheus metrics at http://127.0.0.1:{bound}"
    )
    assert 'mirai_openai_requests_total{model="gpt-4o-mini",status="success"} 2.0' in scraped


# --- strict mode: Run All and nbconvert stop -------------------------------------------------


def strict_notebook(path, first: str) -> None:
    cells = [first, "%%mirai\nThis call fails.", "print('after the failure')"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


def nbconvert(path, env) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute"]
    return subprocess.run(
        [*command, str(path), "--output", "ran.ipynb"],
        env=env,
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.kernel
def test_strict_mode_stops_nbconvert_with_a_nonzero_exit(server, tmp_path):
    server.set_faults(force_status=400)
    try:
        env = server_kernel_env(server.url, tmp_path, NO_MEMORY, KEY)
        notebook = tmp_path / "strict.ipynb"
        strict = "%load_ext mirai_magics\n%config MiraiMagics.raise_on_error = True"
        strict_notebook(notebook, strict)
        stopped = nbconvert(notebook, env)
        assert not (tmp_path / "ran.ipynb").exists()  # nothing written: the run failed
        strict_notebook(notebook, "%load_ext mirai_magics")
        relaxed = nbconvert(notebook, env)
    finally:
        server.set_faults(force_status=None)
    assert stopped.returncode != 0
    assert "CellExecutionError" in stopped.stderr and "ClientRequestError: " in stopped.stderr
    assert "HTTP 400" in stopped.stderr and "strict mode: the notebook stops here" in stopped.stderr
    assert relaxed.returncode == 0, relaxed.stderr  # without strict mode Run All goes on
    ran = nbformat.read(tmp_path / "ran.ipynb", as_version=4)
    assert ran.cells[2].outputs[0]["text"] == "after the failure\n"
    red = ran.cells[1].outputs[0]["data"]["text/plain"]
    assert red.startswith("[mirai] ✗ gpt-4o-mini: HTTP 400")


@pytest.mark.kernel
def test_mirai_strict_env_stops_run_all_after_the_red_line(server, tmp_path):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    server.set_faults(force_status=400)
    env = server_kernel_env(server.url, tmp_path, NO_MEMORY, KEY)
    env["MIRAI_STRICT"] = "1"
    notebook = tmp_path / "strict.ipynb"
    strict_notebook(notebook, "%load_ext mirai_magics")
    nb = nbformat.read(notebook, as_version=4)
    folder = {"metadata": {"path": str(tmp_path)}}
    client = NotebookClient(nb, timeout=60, kernel_name="python3", resources=folder)
    try:
        with pytest.raises(CellExecutionError) as stopped:
            client.execute(env=env)
    finally:
        server.set_faults(force_status=None)
    assert stopped.value.ename == "ClientRequestError"
    failed = nb.cells[1].outputs
    assert failed[0]["data"]["text/plain"].startswith("[mirai] ✗ gpt-4o-mini: HTTP 400")
    assert [o["output_type"] for o in failed] == ["display_data", "error"]
    assert failed[1]["traceback"] == [
        f"ClientRequestError: {failed[1]['evalue']} (strict mode: the notebook stops here)"
    ]
    assert nb.cells[2].outputs == []  # Run All stopped at the failed call
