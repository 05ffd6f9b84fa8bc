"""The sandbox from a real kernel: `%mirai run`, `%%mirai --format code --run` and
`%%mirai_sandbox` against the offline server, and a kernel that survives every attack."""

from __future__ import annotations

import shutil

import pytest
from kernelutil import kernel_fixtures

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(not shutil.which("bwrap"), reason="bubblewrap (bwrap) is not installed"),
]
KEY = "sk-test-sandbox-kernel-0123456789abcdef"
CONFIG = "context: {rag: {enabled: false}}\n"


server, kernel = kernel_fixtures("sandbox-kernel", CONFIG, KEY)


def sandbox_line(execution) -> str:
    return [t for t in execution.data("text/plain") if "[sandbox] " in t][-1].splitlines()[-1]


def test_format_code_run_generates_fills_the_next_cell_and_runs_it(kernel):
    r = kernel.run("%%mirai --format code --run --no-history\nwrite a function")
    payload = r.reply["payload"]
    assert payload and "def offline_answer" in payload[0]["text"]  # still goes to the next cell
    shown = r.data("text/plain")
    assert shown[1].startswith("[mirai] ") and "code → next cell" in shown[1]
    assert sandbox_line(r).startswith("[sandbox] ") and " · exit 0 · " in sandbox_line(r)
    assert r.data("text/html")[-1].startswith('<div class="mirai-sandbox"')
    again = kernel.run("%mirai run")  # the last generated code, once more
    assert " · exit 0 · " in sandbox_line(again)


def test_run_n_runs_that_cells_source_in_the_sandbox_not_here(kernel):
    here = kernel.run("import os; print('uid', os.getuid(), 'key', 'OPENAI_API_KEY' in os.environ)")
    assert "key True" in here.text
    number = kernel.run("print(len(In) - 2)").text.strip()
    there = kernel.run(f"%mirai run {number} --timeout 5")
    assert "uid 65534 key False" in there.text
    assert KEY not in there.text
    kernel.run("%%mirai_sandbox\nprint('boxed', 6 * 7)")
    number = kernel.run("print(len(In) - 2)").text.strip()
    rerun = kernel.run(f"%mirai run {number}")  # a %%mirai_sandbox cell: its body runs again
    assert "boxed 42" in rerun.text and " · exit 0 · " in sandbox_line(rerun)


def test_mirai_sandbox_runs_the_cell_body_isolated(kernel, tmp_path):
    data = tmp_path / "rows.csv"
    data.write_text("a\nb\n")
    r = kernel.run(
        f"%%mirai_sandbox --timeout 5 --mem 256 --file {data}\n"
        "import os\n"
        "print(os.environ.get('OPENAI_API_KEY'), len(open('rows.csv').read().split()))\n"
        "open('out.txt', 'w').write('done')\n"
    )
    assert "None 2" in r.text
    assert "files: out.txt (4 B)" in sandbox_line(r)


def test_bad_input_is_one_line_and_the_kernel_goes_on(kernel):
    cases = {
        "%%mirai --run --no-history\nwrite code": "--run needs --format code",
        "%mirai run 9999": "no cell In[9999]",
        "%%mirai_sandbox --timeout -1\nprint(1)": "needs seconds above 0",
        "%%mirai_sandbox --net\nprint(1)": "allow_network",
        "%%mirai_sandbox --file /no/such.csv\nprint(1)": "--file /no/such.csv: no such file",
    }
    for cell, expected in cases.items():
        r = kernel.run(cell)
        assert r.status == "ok"
        errors = [t for t in r.data("text/plain") if t.startswith("[mirai] ✗")]
        assert len(errors) == 1 and expected in errors[0], (cell, r.text)
        assert "\n" not in errors[0]


def test_the_kernel_survives_every_attack_and_runs_its_next_cell(kernel):
    pid = kernel.run("import os; print(os.getpid())").text.strip()
    attacks = {
        "while True:\n    pass": "stopped: timeout 2 s",
        "x = bytearray(4 * 1024 ** 3)": "stopped: memory limit 1024 MB",
        "import os\nwhile True:\n    os.fork()": "stopped:",
        "import sys\nwhile True:\n    sys.stdout.write('x' * 100_000)": "output limit 1 MB",
        f"import os, signal\nos.kill({pid}, signal.SIGKILL)": "ProcessLookupError",
    }
    for code, expected in attacks.items():
        r = kernel.run(f"%%mirai_sandbox --timeout 2\n{code}", timeout=30)
        assert r.status == "ok" and expected in r.text, (code, r.text[-500:])
    after = kernel.run("import os; print(os.getpid(), 6 * 7)")
    assert after.text.split() == [pid, "42"]
