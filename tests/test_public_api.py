"""The public Python API: ``ask``, ``Session(config)`` and ``await session.achat``.

Scripts run in a subprocess with IPython made unimportable; the asyncio tests await from
their own event loop; one real kernel shows that ``ask`` in a notebook is the notebook's.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kernelutil import Kernel, server_kernel_env

from mirai_magics import MiraiError, Reply, Session, ask
from mirai_magics.config import parse_config
from mirai_magics.errors import ClientRequestError, ConfigError, UsageError
from mirai_magics.server import OfflineServer

KEY = "sk-test-public-api-0123456789abcdef"
README = Path(__file__).resolve().parent.parent / "README.md"
NO_IPYTHON = "import runpy, sys; sys.modules['IPython'] = None; "  # `import IPython` now fails


def readme_script(name: str) -> str:
    """The ```python block that follows ``<!-- test-script: NAME -->`` in the README."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- test-script: {name} -->\n```python\n(.*?)\n```\n", text, re.S)
    assert found, f"README has no test-script {name!r}"
    return found.group(1) + "\n"


def chat_bodies(server) -> list[dict]:
    return [
        r["body"]
        for r in server.stats_snapshot()["recent"]
        if r["path"].endswith("/chat/completions")
    ]


def user_texts(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def run_python(code: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=120,
    )


# --- scripts: no IPython --------------------------------------------------------------------


def test_the_readme_script_runs_without_ipython(offline_server, tmp_path):
    script = tmp_path / "ask.py"
    script.write_text(readme_script("python-api"))
    runner = NO_IPYTHON + "runpy.run_path(sys.argv[1], run_name='__main__')"
    done = run_python(
        runner, str(script), cwd=tmp_path, MIRAI_BASE_URL=offline_server.url, OPENAI_API_KEY=KEY
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "You said: Name three uses of a hash map." in lines
    assert any(re.fullmatch(r"main/gpt-4o-mini · \d+ → \d+ tokens · 1 attempt", x) for x in lines)
    assert "refused: unknown profile 'nope' — use one of: main, heavy, fast" in done.stdout
    assert lines[-2:] == ["4 messages in the history", "3 facts"]
    bodies = chat_bodies(offline_server)
    assert len(bodies) == 6  # the refused profile never reached the server
    assert user_texts(bodies[2]) == ["Pick a city.", "Why that one?"]  # history=True
    facts = bodies[3:]
    assert {b["model"] for b in facts} == {"gpt-3.5-turbo"}
    assert {b["max_tokens"] for b in facts} == {60}
    assert sorted(user_texts(b)[0] for b in facts) == [
        "One fact about Kyoto.",
        "One fact about Lima.",
        "One fact about Oslo.",
    ]
    assert KEY not in done.stdout + done.stderr


def test_the_docstring_examples_run_offline_and_import_no_ipython(tmp_path):
    code = (
        "import doctest, sys\n"
        "import mirai_magics.api as api, mirai_magics.session as session\n"
        "results = [doctest.testmod(api), doctest.testmod(session)]\n"
        "print(*(f'{r.failed}/{r.attempted > 0}' for r in results), 'IPython' in sys.modules)\n"
    )
    done = run_python(code, cwd=tmp_path)  # no key, no base URL: the bundled offline server
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0/True 0/True False", done.stdout + done.stderr


# --- ask ------------------------------------------------------------------------------------


def test_ask_sends_the_prompt_with_the_profile_and_params(make_session, offline_server):
    session = make_session()
    reply = ask(
        "What is 2 + 2?", "fast", system="Answer briefly.", max_tokens=40, seed=7, session=session
    )
    assert isinstance(reply, Reply) and str(reply) == reply.text
    assert reply.text.endswith("You said: What is 2 + 2?")
    assert (reply.record.profile, reply.record.model, reply.record.ok) == (
        "fast",
        "gpt-3.5-turbo",
        True,
    )
    (body,) = chat_bodies(offline_server)
    assert (body["model"], body["max_tokens"], body["seed"], body["temperature"]) == (
        "gpt-3.5-turbo",
        40,
        7,
        0.2,
    )
    system, user = body["messages"]
    assert system["content"].startswith(session.config.context.system_prompt)
    assert system["content"].endswith("Answer briefly.")
    assert user == {"role": "user", "content": "What is 2 + 2?"}
    assert len(session.history) == 0  # history=False: nothing sent, nothing kept
    assert session.records[-1] is reply.record


def test_ask_with_history_continues_the_conversation(make_session, offline_server):
    session = make_session()
    first = ask("Pick a colour.", history=True, session=session)
    ask("Why that one?", history=True, session=session)
    ask("Unrelated question.", session=session)
    bodies = chat_bodies(offline_server)
    assert [m["content"] for m in bodies[1]["messages"][1:]] == [
        "Pick a colour.",
        first.text,
        "Why that one?",
    ]
    assert user_texts(bodies[2]) == ["Unrelated question."]
    assert len(session.history) == 4


@pytest.mark.parametrize(
    ("call", "error", "says"),
    [
        (lambda s: ask("hi", profile="nope", session=s), UsageError, "unknown profile 'nope'"),
        (lambda s: ask("hi", profile="embed", session=s), UsageError, "unknown profile 'embed'"),
        (lambda s: ask("  ", session=s), UsageError, "got an empty prompt"),
        (lambda s: ask(["hi"], session=s), UsageError, "Session.chat(messages)"),
        (lambda s: ask("hi", colour="red", session=s), UsageError, "unknown option(s) colour"),
        (lambda s: s.chat("hi", profile="nope"), ConfigError, "use one of: main, heavy"),
    ],
)
def test_a_refused_call_is_one_line_and_sends_nothing(
    make_session, offline_server, call, error, says
):
    with pytest.raises(error) as raised:
        call(make_session())
    assert says in str(raised.value) and "\n" not in str(raised.value)
    assert chat_bodies(offline_server) == []


def test_a_failed_call_raises_its_mirai_error(make_session, offline_server):
    session = make_session()
    offline_server.script(["400"])
    with pytest.raises(ClientRequestError) as raised:
        ask("hi", history=True, session=session)
    assert isinstance(raised.value, MiraiError) and "\n" not in str(raised.value)
    assert len(chat_bodies(offline_server)) == 1 and len(session.history) == 0


# --- Session(config) ------------------------------------------------------------------------


def test_session_takes_a_path_a_config_or_the_default_lookup(offline_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    path = tmp_path / "mirai.yaml"
    path.write_text(
        f"endpoint: {{base_url: '{offline_server.url}'}}\ncontext: {{max_history_messages: 2}}\n"
    )
    with Session(str(path)) as session:
        assert session.config.context.max_history_messages == 2
        assert session.chat("over the file's endpoint").record.ok
        path.write_text(
            path.read_text().replace("max_history_messages: 2", "max_history_messages: 4")
        )
        session.reload()  # re-reads the path it was given
        assert session.config.context.max_history_messages == 4
    with Session(path) as session:  # a Path too
        assert session.config.context.max_history_messages == 4
    monkeypatch.setenv("MIRAI_CONFIG", str(path))
    with Session() as session:  # None: packaged default, then $MIRAI_CONFIG
        assert session.config.context.max_history_messages == 4
    with Session(parse_config("context: {max_history_messages: 6}")) as session:
        assert session.config.context.max_history_messages == 6
    assert len(chat_bodies(offline_server)) == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("context:\n  max_history_messages: 2\n",), "not str holding YAML text"),
        ((42,), "not int"),
        (("a.yaml",), "both config and config_path"),
    ],
)
def test_a_session_config_it_cannot_take_is_one_line(args, says):
    kwargs = {"config_path": "b.yaml"} if args == ("a.yaml",) else {}
    with pytest.raises(ConfigError) as raised:
        Session(*args, **kwargs)
    assert says in str(raised.value) and "\n" not in str(raised.value)


# --- achat ----------------------------------------------------------------------------------


async def until(condition, timeout_s: float = 10.0) -> None:
    """Yield to the loop until ``condition()`` holds (something another thread does)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def test_achat_calls_run_concurrently_from_the_callers_loop(make_session, offline_server):
    session = make_session()
    offline_server.set_faults(latency_ms=150)

    async def main() -> list[Reply]:
        calls = [session.achat(f"question {i}", profile="fast") for i in range(3)]
        return await asyncio.gather(*calls)

    replies = asyncio.run(main())
    assert [r.text.rsplit(": ", 1)[-1] for r in replies] == [f"question {i}" for i in range(3)]
    assert {r.record.profile for r in replies} == {"fast"}
    stats = offline_server.stats_snapshot()
    assert stats["max_in_flight"] == 3  # all three at once: the caller's loop was never blocked
    sent = sorted((b["messages"] for b in chat_bodies(offline_server)), key=str)
    assert sent == [[{"role": "user", "content": f"question {i}"}] for i in range(3)]


def test_cancelling_the_awaiting_task_cancels_the_engine_call(make_session, offline_server):
    session = make_session()
    offline_server.set_faults(hang=True)

    async def main() -> Reply:
        task = asyncio.create_task(session.achat("never answered"))
        await until(lambda: offline_server.stats_snapshot()["in_flight"] == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert session.records[-1].error_code == "cancelled"  # ended when the await did
        await until(lambda: offline_server.stats_snapshot()["in_flight"] == 0)  # hung up
        offline_server.set_faults(hang=False)
        return await session.achat("still working")

    after = asyncio.run(main())
    assert after.record.ok and after.text.endswith("You said: still working")
    assert len(chat_bodies(offline_server)) == 2  # the cancelled call was not retried


# --- in a notebook --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel_server():
    with OfflineServer().start() as srv:
        yield srv


@pytest.mark.kernel
def test_ask_in_a_notebook_is_the_notebooks_session(kernel_server, tmp_path):
    env = server_kernel_env(kernel_server.url, tmp_path, "context: {rag: {enabled: false}}\n", KEY)
    with Kernel(tmp_path, env) as k:
        k.run("%load_ext mirai_magics")
        k.run("%%mirai\nRemember the word teapot.")
        asked = k.run(
            "from mirai_magics import ask\n"
            "reply = ask('Which word was it?', history=True)\n"
            "print(type(reply).__name__, reply.record.profile)"
        )
        assert asked.text.strip() == "Reply main"
        assert user_texts(chat_bodies(kernel_server)[-1]) == [
            "Remember the word teapot.",
            "Which word was it?",
        ]
        k.run("%%mirai\nAnd now?")  # the cells see ask's turn: one conversation
        assert user_texts(chat_bodies(kernel_server)[-1])[-2:] == ["Which word was it?", "And now?"]
        awaited = k.run(  # top-level await: achat from the kernel's own running loop
            "from mirai_magics.api import current_session\n"
            "r = await current_session().achat('async hello', profile='fast')\n"
            "magics = get_ipython().magics_manager.registry['MiraiMagics']\n"
            "print(r.record.profile, current_session() is magics.session)"
        )
        assert awaited.text.strip() == "fast True"
