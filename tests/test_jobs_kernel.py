"""Background cells and batches in a real kernel: the answer fills the cell's own output
area later, history in completion order, `%mirai jobs`, results as Python objects, and a
kernel restart mid-batch that `%mirai batch resume` finishes."""

from __future__ import annotations

import re

import pytest
from kernelutil import Kernel, server_kernel_env

from mirai_magics.server import OfflineServer

pytestmark = pytest.mark.kernel
KEY = "sk-test-jobs-kernel-0123456789abcdef"
CONFIG = "context: {rag: {enabled: false}}\n"


@pytest.fixture
def server():
    with OfflineServer().start() as srv:
        yield srv


def display_and_view(message: dict) -> tuple[str, str]:
    """A display message's display id and the Output widget (model id) it shows."""
    content = message["content"]
    view = content["data"]["application/vnd.jupyter.widget-view+json"]
    return content["transient"]["display_id"], view["model_id"]


def test_background_cell_answers_into_its_own_display(server, tmp_path):
    env = server_kernel_env(server.url, tmp_path, CONFIG, KEY)
    with Kernel(tmp_path, env) as k:
        k.run("%load_ext mirai_magics")
        server.set_faults(latency_ms=400)
        first = k.run("%%mirai --bg --out later\nfirst question")
        line = first.text.strip().splitlines()[0]
        job_id = re.fullmatch(r"job (c[0-9a-f]{6}) · main · queued \(background\)", line).group(1)
        views = dict(display_and_view(m) for m in first.of_type("display_data"))
        assert len(views) == 2  # the answer's and the badge's displays, updated later
        waited = k.run("%mirai jobs wait")  # the update arrives while this cell runs
        updates = waited.of_type("update_display_data")
        # both displays updated, each keeping its Output widget's view (without it, JupyterLab
        # would swap the widget for the text/html fallback)
        assert dict(display_and_view(m) for m in updates) == views
        shown = "\n".join(m["content"]["data"]["text/plain"] for m in updates)
        assert "You said: first question" in shown
        assert f"background {job_id}" in shown and "history: appended on completion" in shown
        # the same answer reaches the widgets by comm, which JupyterLab takes at any time
        states = [m["content"] for m in waited.of_type("comm_msg")]
        widgets = "\n".join(str(c["data"]) for c in states if c["comm_id"] in views.values())
        assert "You said: first question" in widgets and "mirai-badge" in widgets
        assert f"job {job_id}: done, 1/1 done, 0 failed" in waited.text
        server.set_faults(latency_ms=0)
        k.run("%%mirai\nsecond question")  # sent with the background turn in its history
        body = server.stats_snapshot()["recent"][-1]["body"]["messages"]
        assert [m["content"] for m in body if m["role"] == "user"][-2] == "first question"
        obj = k.run(f"x = %mirai jobs result {job_id}\nprint(type(x).__name__, x.ok, later[:7])")
        assert "ItemResult True **Offli" in obj.text
        table = k.run("%mirai jobs").text
        assert re.search(rf"{job_id}\s+done\s+cell\s+main\s+\d+s\s+1/1\s+1\s+\d+/\d+", table)
        bad = k.run("%mirai jobs result nope")
        assert "no job 'nope'" in bad.text and bad.status == "ok"


def test_kernel_restart_mid_batch_then_resume(server, tmp_path):
    # 5 requests a second: the 40 items take ~7 s, so the restart surely lands mid-batch
    env = server_kernel_env(server.url, tmp_path, CONFIG + "limits: {rps: {chat: 5}}\n", KEY)
    with Kernel(tmp_path, env) as k:
        k.run("%load_ext mirai_magics")
        server.set_faults(latency_ms=60)
        started = k.run(
            "import time\n"
            "from mirai_magics import batch\n"
            "from mirai_magics.api import current_session\n"
            "job = batch([f'item {i}' for i in range(40)], template='Say {item}', wait=False)\n"
            "store = current_session().jobs.store\n"
            "while store.job(job).done < 6: time.sleep(0.02)\n"
            "print(job)"
        )
        job_id = started.text.split()[-1]
        (tmp_path / "mirai.yaml").write_text(CONFIG)  # the restarted kernel resumes unthrottled
        k.restart()
        k.run("%load_ext mirai_magics")
        table = k.run("%mirai jobs").text
        done_before = int(
            re.search(rf"{job_id}\s+interrupted\s+batch\s+main\s+\S+\s+(\d+)/40", table).group(1)
        )
        assert 6 <= done_before < 40
        before = server.stats_snapshot().by_path["/v1/chat/completions"]
        server.set_faults(latency_ms=0)
        resumed = k.run(f"r = %mirai batch resume {job_id}\nprint(len(r), len(r.failed), r[39])")
        assert "40 0 **Offline answer**" in resumed.text
        sent = server.stats_snapshot().by_path["/v1/chat/completions"] - before
        assert sent <= 40 - done_before  # finished items are not sent again
        assert f"batch {job_id}: 40/40 done · 0 failed" in resumed.text + str(
            resumed.data("text/plain")
        ) + str([m["content"] for m in resumed.messages if m["msg_type"] == "comm_msg"])
