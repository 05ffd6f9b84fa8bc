"""Canaries: sticky assignment, MIRAI_CANARY, rollback, badge/status, report and replay."""

from __future__ import annotations

import contextlib
import itertools
import os

import pytest
from markers import needs_genai_prices

from mirai_magics.cli import main as cli_main
from mirai_magics.client.canary import Canaries, Window, assigned, session_identity, verdict
from mirai_magics.client.records import CallRecord
from mirai_magics.config import parse_config
from mirai_magics.errors import ClientRequestError, ConfigError
from mirai_magics.replay import Replay
from mirai_magics.schema import Canary
from mirai_magics.server import OfflineServer
from mirai_magics.session import Session
from mirai_magics.ui.badges import badge_text
from mirai_magics.ui.defaults import CellDefaults
from mirai_magics.ui.status import status_rows

KEY = "sk-test-canary-0123456789abcdef"
CANARY = "gpt-4o-2024-11-20"
HELLO = [{"role": "user", "content": "hello"}]


def canary_yaml(percent: float = 50, **extra: object) -> str:
    knobs = "".join(f", {k}: {v}" for k, v in extra.items())
    return f"models: {{heavy: {{canary: {{name: {CANARY}, percent: {percent}{knobs}}}}}}}\n"


def session_id(in_canary: bool, percent: float = 50) -> str:
    """The first id ``s0``, ``s1``, … whose heavy assignment at ``percent`` is ``in_canary``."""
    ids = (f"s{i}" for i in itertools.count())
    return next(i for i in ids if assigned(i, "heavy", percent) == in_canary)


def models_seen(server) -> list[str]:
    return [r["body"]["model"] for r in server.stats_snapshot()["recent"] if r["body"]]


def status(session: Session) -> dict[str, str]:
    return dict(status_rows(session, CellDefaults()))


# --- assignment -------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [5, 20, 50])
def test_share_of_sessions_in_the_canary_is_the_percent(percent):
    ids = [f"kernel-{i}" for i in range(2000)]
    share = sum(assigned(i, "heavy", percent) for i in ids) / len(ids) * 100
    assert percent - 5 <= share <= percent + 5
    # raising the percent only adds sessions; each profile draws on its own
    assert all(assigned(i, "heavy", 60) for i in ids if assigned(i, "heavy", percent))
    assert [assigned(i, "main", 50) for i in ids] != [assigned(i, "heavy", 50) for i in ids]


def test_the_session_id_comes_from_the_environment_then_the_notebook():
    env = {"MIRAI_SESSION_ID": "ci-run", "JPY_SESSION_NAME": "/nb/a.ipynb"}
    vscode = {"__vsc_ipynb_file__": "/nb/b.ipynb"}
    assert session_identity(env, vscode) == "ci-run"
    assert session_identity({"JPY_SESSION_NAME": "/nb/a.ipynb"}, vscode) == "/nb/a.ipynb"
    assert session_identity({}, vscode) == "/nb/b.ipynb"
    assert session_identity({}, {}) != session_identity({}, {})  # random per Session


def test_the_same_id_gets_the_same_assignment_in_every_session(
    make_session, offline_server, monkeypatch
):
    for in_canary in (True, False, True):
        monkeypatch.setenv("MIRAI_SESSION_ID", session_id(in_canary))
        session = make_session(canary_yaml(50))
        replies = [session.chat(HELLO, "heavy") for _ in range(2)]
        expected = CANARY if in_canary else "gpt-4o"
        assert models_seen(offline_server)[-2:] == [expected, expected]
        assert [r.record.canary for r in replies] == [CANARY if in_canary else None] * 2
        state = "assigned" if in_canary else "not assigned"
        assert status(session)["canary heavy"] == f"{CANARY} · 50% · this session: {state}"
        flag = f"canary {CANARY}"
        assert (flag in badge_text(replies[0].record)) is in_canary
        session.close()


def test_mirai_canary_forces_or_turns_off_and_a_model_pin_wins(
    make_session, offline_server, monkeypatch, tmp_path
):
    monkeypatch.setenv("MIRAI_CANARY", "force")
    monkeypatch.setenv("MIRAI_BASE_URL", offline_server.url)
    path = tmp_path / "canary.yaml"
    path.write_text(canary_yaml(0))
    with Session(config_path=str(path)) as forced:
        assert forced.chat(HELLO, "heavy").record.model == CANARY
        assert forced.chat(HELLO, "heavy", model="gpt-4o").record.canary is None
        assert models_seen(offline_server)[-2:] == [CANARY, "gpt-4o"]
        row = status(forced)["canary heavy"]
        assert row == f"{CANARY} · 0% · this session: assigned (MIRAI_CANARY=force)"
        monkeypatch.setenv("MIRAI_CANARY", "off")
        forced.reload()  # a reload re-reads MIRAI_CANARY
        assert forced.chat(HELLO, "heavy").record.model == "gpt-4o"
    off = make_session(canary_yaml(100))
    assert off.chat(HELLO, "heavy").record.canary is None
    assert models_seen(offline_server)[-2:] == ["gpt-4o", "gpt-4o"]
    assert status(off)["canary heavy"].endswith("this session: not assigned (MIRAI_CANARY=off)")
    monkeypatch.setenv("MIRAI_CANARY", "sometimes")
    with pytest.raises(ConfigError, match="MIRAI_CANARY='sometimes'"):
        make_session(canary_yaml(100))


# --- rollback ---------------------------------------------------------------------------


def test_a_failing_canary_is_suspended_and_calls_go_to_the_stable(make_session, offline_server):
    offline_server.set_faults(fail_models=CANARY)
    session = make_session(canary_yaml(100, min_calls=5, window_calls=20))
    early = [session.chat(HELLO, "heavy").record for _ in range(5)]
    # the canary failed (500s, then its open breaker): each call fell back to main
    assert [(r.canary, r.profile, r.model) for r in early] == [(CANARY, "main", "gpt-4o-mini")] * 5
    assert "canary suspended" not in badge_text(early[-1])
    offline_server.reset_stats()
    later = [session.chat(HELLO, "heavy").record for _ in range(3)]
    assert models_seen(offline_server) == ["gpt-4o"] * 3  # the stable model, nothing else
    assert [(r.canary, r.profile, r.model) for r in later] == [(None, "heavy", "gpt-4o")] * 3
    assert badge_text(later[0]).endswith("· canary suspended: error rate +100 points")
    assert status(session)["canary heavy"] == (
        f"{CANARY} · 100% · this session: assigned · suspended: error rate +100 points"
    )


def test_the_canary_is_judged_against_the_stable_models_calls(make_session, offline_server):
    session = make_session(canary_yaml(100, min_calls=10, window_calls=10))
    offline_server.script(["400"])  # creative runs the stable gpt-4o: 1 failure in 10
    for _ in range(10):
        with contextlib.suppress(ClientRequestError):
            session.chat(HELLO, "creative")
    offline_server.script(["400", "400", "400"])  # the canary: 3 in 10
    for _ in range(10):
        with contextlib.suppress(ClientRequestError):
            session.chat(HELLO, "heavy")
    assert models_seen(offline_server)[-10:] == [CANARY] * 10
    reply = session.chat(HELLO, "heavy")
    assert reply.record.model == "gpt-4o"
    assert "canary suspended: error rate +20 points" in badge_text(reply.record)


def test_verdict_on_error_rate_and_p95_latency():
    settings = Canary(name=CANARY, percent=5, min_calls=4)

    def window(*calls: tuple[bool, float]) -> Window:
        w = Window(10)
        for ok, ms in calls:
            w.add(ok, ms)
        return w

    fast = window(*[(True, 100.0)] * 4)
    slow = window(*[(True, 160.0)] * 4)
    assert verdict(slow, fast, settings) == "p95 latency 1.6× the stable's"
    assert verdict(window(*[(True, 140.0)] * 4), fast, settings) is None
    assert verdict(slow, window((True, 100.0)), settings) is None  # too few stable calls
    assert verdict(window((False, 0), (True, 100.0)), Window(1), settings) is None  # too few
    failing = window((False, 0), *[(True, 100.0)] * 9)  # 10%: +10 points over an unknown 0
    assert verdict(failing, Window(1), settings) == "error rate +10 points"
    assert verdict(failing, window((False, 0), *[(True, 100.0)] * 9), settings) is None


def test_calls_never_sent_and_replayed_calls_are_not_judged():
    config = parse_config(canary_yaml(100, min_calls=1))
    canaries = Canaries(config.models, "any", mode="force")
    for error_code, replayed in (("quota_exceeded", False), (None, True)):
        record = CallRecord(profile="heavy", model="", requested_profile="heavy")
        params = canaries.apply("heavy", config.models["heavy"], {"model": "gpt-4o"}, record)
        record.model, record.canary = params["model"], CANARY
        record.error_code, record.replayed = error_code, replayed
        record.error = "refused" if error_code else None
        canaries.on_call(record, HELLO, None)
    assert canaries.windows == {} and canaries.suspended == {}


# --- the report -------------------------------------------------------------------------


@needs_genai_prices
def test_canary_report_per_model_version(make_session, offline_server, capsys):
    session = make_session(canary_yaml(100))
    for _ in range(3):
        session.chat(HELLO, "heavy")
    session.chat(HELLO, "main")
    offline_server.set_faults(fail_models=CANARY)
    fell_back = session.chat(HELLO, "heavy").record  # the canary fails, main answers
    assert (fell_back.canary, fell_back.model) == (CANARY, "gpt-4o-mini")
    session.flush_logs()
    path = session.call_logs[0].path
    assert cli_main(["canary-report", "--log", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"call log: {path}"
    assert lines[1].split()[:4] == ["model", "version", "calls", "errors"]
    canary = next(line for line in lines if line.startswith(CANARY))
    assert canary.split()[1:5] == ["(canary)", "4", "1", "(25.0%)"]
    assert "$" in canary  # priced as gpt-4o
    stable = next(line for line in lines if line.startswith("gpt-4o-mini"))
    assert stable.split()[1:4] == ["2", "0", "(0.0%)"]
    assert cli_main(["canary-report"]) == 0  # the default: calls.sqlite in MIRAI_HOME
    assert capsys.readouterr().out.splitlines()[0] == f"call log: {path}"


def test_canary_report_without_a_log_is_one_line(tmp_path, capsys):
    assert cli_main(["canary-report", "--log", str(tmp_path / "none.sqlite")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mirai: no call log at") and "\n" not in err


# --- replay -----------------------------------------------------------------------------


def test_a_recorded_run_with_canaries_replays_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("MIRAI_SESSION_ID", session_id(True, 30))
    cassette = tmp_path / "canary.cassette.sqlite"
    yaml_text = canary_yaml(30) + "context: {rag: {enabled: false}}"
    prompts = [("heavy", "first"), ("main", "second"), ("heavy", "first")]
    seed = int.from_bytes(os.urandom(4), "big")
    with OfflineServer(vary=True, seed=seed).start() as server:
        monkeypatch.setenv("MIRAI_BASE_URL", server.url)
        monkeypatch.setenv("MIRAI_RECORD", str(cassette))
        with Session(parse_config(yaml_text, "test.yaml")) as recording:
            recorded = [recording.chat([{"role": "user", "content": p}], n) for n, p in prompts]
        monkeypatch.delenv("MIRAI_RECORD")
        assert models_seen(server) == [CANARY, "gpt-4o-mini", CANARY]
        sent = server.stats_snapshot()["requests"]

        def replayed() -> list[tuple]:
            with Session(parse_config(yaml_text, "test.yaml")) as session:
                session.set_replay(Replay(cassette))
                replies = [session.chat([{"role": "user", "content": p}], n) for n, p in prompts]
                assert session.canaries.windows == {}  # replays do not feed the rollback
            return [(r.text, r.record.model, r.record.canary, r.record.replayed) for r in replies]

        first, second = replayed(), replayed()
        assert server.stats_snapshot()["requests"] == sent  # no network
    assert first == second
    assert [t for t, *_ in first] == [r.text for r in recorded]
    assert recorded[0].text != recorded[2].text  # the server varied: the answers are replayed
    versions = [(model, canary) for _, model, canary, _ in first]
    assert versions == [(CANARY, CANARY), ("gpt-4o-mini", None), (CANARY, CANARY)]
