"""Cost: genai-prices, `pricing:` overrides, local endpoints, the call log, status and budgets.

Every call goes through the real SDK to the offline server, which reports usage; the cost
each test expects is computed from the usage the call log recorded.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from kernelutil import Kernel, server_kernel_env
from markers import needs_genai_prices
from redisutil import redis_server  # noqa: F401  (fixture)

from mirai_magics.calllog import SCHEMA, CallLog, cost_totals, read_calls
from mirai_magics.client.records import CallRecord
from mirai_magics.client.spend import Spend, midnight
from mirai_magics.config import parse_config
from mirai_magics.errors import QuotaExceededError
from mirai_magics.pricing import usd
from mirai_magics.server import OfflineServer
from mirai_magics.session import Session
from mirai_magics.ui.badges import badge_text
from mirai_magics.ui.status import cost_rows, notebook_costs

KEY = "sk-test-cost-0123456789abcdef"
README = Path(__file__).resolve().parent.parent / "README.md"
HELLO = [{"role": "user", "content": "hello"}]
NO_MEMORY = "context: {rag: {enabled: false}}\n"


def genai_price(model: str, tokens_in: int, tokens_out: int) -> float:
    genai_prices = pytest.importorskip("genai_prices", reason="genai-prices: Python 3.11+")
    Usage, calc_price = genai_prices.Usage, genai_prices.calc_price
    usage = Usage(input_tokens=tokens_in, output_tokens=tokens_out)
    return float(calc_price(usage, model, provider_id="openai").total_price)


def logged(session: Session) -> list[dict]:
    session.flush_logs()  # rows are written by a background thread
    return read_calls(session.call_logs[0].path, 100)


def requests_seen(server) -> int:
    return server.stats_snapshot()["requests"]


def badge(session: Session, record: CallRecord) -> str:
    return badge_text(record, [], session.policy.prices)


# --- prices -------------------------------------------------------------------------------


def test_the_call_log_holds_genai_prices_price_of_the_recorded_usage(make_session):
    session = make_session(NO_MEMORY)
    mini = session.chat(HELLO, "main").record
    nano = session.chat(HELLO, "main", model="gpt-4.1-nano").record  # in no hand-written table
    rows = logged(session)
    assert [r["model"] for r in rows] == ["gpt-4o-mini", "gpt-4.1-nano"]
    for row, record in zip(rows, (mini, nano), strict=True):
        assert (row["tokens_in"], row["tokens_out"]) == (record.tokens_in, record.tokens_out)
        expected = genai_price(row["model"], row["tokens_in"], row["tokens_out"])
        assert expected > 0 and row["cost"] == pytest.approx(expected, rel=1e-9)
        assert f"≈ {usd(expected)}" in badge(session, record)
    assert rows[0]["cost"] == pytest.approx((mini.tokens_in * 0.15 + mini.tokens_out * 0.6) / 1e6)


def test_a_pricing_entry_wins_and_prices_a_deployment_name(make_session):
    session = make_session(
        NO_MEMORY + "models: {deploy: {name: contoso-gpt4o-prod}}\n"
        "pricing: {gpt-4o-mini: {input: 1000, output: 2000}, contoso-gpt4o-prod: {input: 3}}\n"
    )
    mini = session.chat(HELLO, "main").record
    deployed = session.chat(HELLO, "deploy").record
    main_row, deploy_row = logged(session)
    assert main_row["cost"] == pytest.approx((mini.tokens_in * 1000 + mini.tokens_out * 2000) / 1e6)
    assert deploy_row["cost"] == pytest.approx(deployed.tokens_in * 3 / 1e6)  # output: 0
    assert "cost unknown" not in badge(session, deployed)


def test_a_keyless_local_endpoint_costs_nothing(make_session, offline_server):
    session = make_session(
        NO_MEMORY + f"endpoints: {{local: {{base_url: '{offline_server.url}'}}}}\n"
        "models: {llama: {name: llama3.2, endpoint: local}, "
        "local4o: {name: gpt-4o, endpoint: local}}\n"
    )
    llama = session.chat(HELLO, "llama").record
    local4o = session.chat(HELLO, "local4o").record  # genai-prices knows gpt-4o: local wins
    assert [r["cost"] for r in logged(session)] == [0.0, 0.0]
    assert requests_seen(offline_server) == 2  # both were sent: to the keyless endpoint
    for record in (llama, local4o):
        assert badge(session, record).split(" · ")[4] == "$0 (local)"


def test_the_offline_server_of_a_keyless_session_costs_nothing_and_says_offline():
    with Session(parse_config(NO_MEMORY)) as session:  # no key, no base URL: offline
        record = session.chat(HELLO, "heavy").record
        assert logged(session)[0]["cost"] == 0.0
        shown = badge(session, record)
        assert cost_rows(session.policy.spend, notebook_costs(session)) == []  # nothing spent
    assert shown.endswith(" · offline") and "$" not in shown and "cost" not in shown


def test_an_unknown_model_is_cost_unknown_on_the_badge_in_the_log_and_in_status(make_session):
    session = make_session(NO_MEMORY + "models: {mystery: {name: mystery-model-7}}\n")
    record = session.chat(HELLO, "mystery").record
    assert badge(session, record).split(" · ")[4] == "cost unknown"
    assert logged(session)[0]["cost"] is None
    rows = dict(cost_rows(session.policy.spend, notebook_costs(session)))
    assert rows["cost mystery-model-7"] == (
        "session $0 (1 call, 1 cost unknown) · notebook $0 (1 call, 1 cost unknown)"
    )


def test_loading_the_magics_and_a_session_imports_no_price_database():
    code = (
        "import sys, mirai_magics.ui.magics, mirai_magics.calllog, mirai_magics.client.policy\n"
        "print('genai_prices' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_an_older_call_log_gains_the_cost_columns(tmp_path):
    path = tmp_path / "calls.sqlite"
    with sqlite3.connect(path) as old:  # the first layout: no cost, no notebook
        old.executescript(SCHEMA)
        old.execute("INSERT INTO calls (model, time, replayed) VALUES ('gpt-4o', 1.0, 0)")
    old.close()
    assert cost_totals(path, notebook="nb.ipynb") == {}  # no column yet: nothing, no error
    log = CallLog(path, notebook="nb.ipynb")
    record = CallRecord("main", "gpt-4o-mini", tokens_in=1000, tokens_out=100, user="ada")
    log.write(record, HELLO, "hi")
    log.close()
    totals = cost_totals(path, notebook="nb.ipynb")
    assert list(totals) == ["gpt-4o-mini"] and totals["gpt-4o-mini"].calls == 1
    assert totals["gpt-4o-mini"].cost == pytest.approx(genai_price("gpt-4o-mini", 1000, 100))


def test_the_readme_cost_section_configs_are_valid():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Cost and budgets\n")[1].split("\n## ")[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    configs = [parse_config(block, "README.md") for block in blocks]
    assert configs[0].pricing["contoso-gpt4o-prod"].output == 10.0
    assert configs[1].limits.budget_usd.per_day == 5.0


# --- budgets ------------------------------------------------------------------------------


@needs_genai_prices
def test_the_session_budget_refuses_before_sending_and_names_the_setting(
    make_session, offline_server
):
    session = make_session(NO_MEMORY + "limits: {budget_usd: {per_session: 0.001}}\n")
    with pytest.raises(QuotaExceededError) as refused:
        session.chat(HELLO, "heavy")  # gpt-4o, 2,500 output tokens at most: ≈ $0.025
    message = str(refused.value)
    assert requests_seen(offline_server) == 0
    assert "limits.budget_usd.per_session $0.001 ($0 spent this session)" in message
    assert "it was not sent" in message and "≤ 2,500 out" in message and "\n" not in message
    assert session.policy.rejections == {"budget": 1}
    assert f"✗ {message}\n" in README.read_text(encoding="utf-8")  # the README shows this line
    assert session.policy.budgets.global_budget.used() == 0  # its tokens were given back
    small = session.chat(HELLO, "main", max_tokens=50).record  # ≈ $0.00003 at most: fits
    assert requests_seen(offline_server) == 1
    assert session.policy.budgets.global_budget.used() == small.tokens_in + small.tokens_out


@needs_genai_prices
def test_a_refusal_in_redis_mode_gives_the_shared_tokens_back(
    make_session,
    offline_server,
    redis_server,  # noqa: F811
    monkeypatch,
):
    monkeypatch.setenv("MIRAI_REDIS_URL", redis_server.url)
    session = make_session(
        NO_MEMORY + "redis: {namespace: tcost}\n"
        "limits: {backend: redis, user: ada, budget_usd: {per_session: 0.001}}\n",
        fake_time=False,
    )
    with pytest.raises(QuotaExceededError, match=r"limits\.budget_usd\.per_session"):
        session.chat(HELLO, "heavy")
    assert requests_seen(offline_server) == 0
    rows = dict(session.extra_status())
    assert rows["tokens this minute (shared, ada)"].startswith("0 / ")  # nothing held in Redis


@needs_genai_prices
def test_settlement_counts_real_costs_not_estimates(make_session, offline_server):
    # each call may cost up to ~$0.0012 (2,000 output tokens), so without settlement the
    # second call would not fit; real answers cost ~$0.00002
    session = make_session(NO_MEMORY + "limits: {budget_usd: {per_session: 0.002}}\n")
    records = [session.chat(HELLO, "main").record for _ in range(5)]
    assert requests_seen(offline_server) == 5
    spend = session.policy.spend
    real = sum(genai_price("gpt-4o-mini", r.tokens_in, r.tokens_out) for r in records)
    assert spend.session_total == pytest.approx(real, rel=1e-9) and spend.held == 0
    assert spend.totals()["gpt-4o-mini"].calls == 5
    assert sum(r["cost"] for r in logged(session)) == pytest.approx(real, rel=1e-9)
    rows = dict(cost_rows(spend, notebook_costs(session)))
    assert rows["budget this session"] == f"{usd(real)} of $0.002 (limits.budget_usd.per_session)"


@needs_genai_prices
def test_the_day_budget_counts_an_earlier_session_on_the_same_home(make_session, offline_server):
    first = make_session(NO_MEMORY)
    spent = sum(first.policy.prices.cost(first.chat(HELLO, "main").record) for _ in range(3))
    first.close()  # a kernel restart: the next session reads the day from the call log
    cap = spent + 0.00001
    second = make_session(NO_MEMORY + f"limits: {{budget_usd: {{per_day: {cap}}}}}\n")
    assert second.policy.spend.today() == pytest.approx(spent, rel=1e-9)
    with pytest.raises(QuotaExceededError) as refused:
        second.chat(HELLO, "main", max_tokens=50)  # ≤ $0.00003: over what is left today
    assert "limits.budget_usd.per_day" in str(refused.value) and "today" in str(refused.value)
    assert requests_seen(offline_server) == 3
    second.chat(HELLO, "main", max_tokens=5)  # ≤ $0.000005: fits
    assert requests_seen(offline_server) == 4


def test_a_new_day_starts_from_nothing():
    now = [datetime(2025, 3, 1, 23, 59).timestamp()]

    def spent_before(_config, since, _until):  # the call log: $0.50 earlier on March 1
        return 0.5 if datetime.fromtimestamp(since).day == 1 else 0.0

    spend = Spend(now=lambda: now[0], spent_before=spent_before)
    spend.configure(parse_config("pricing: {m: {input: 1000000, output: 0}}"))
    record = CallRecord("main", "m", tokens_in=1, tokens_out=0)
    spend.settle(None, record)
    assert spend.today() == pytest.approx(1.5)
    now[0] += timedelta(minutes=2).total_seconds()
    assert spend.today() == 0.0 and spend.session_total == pytest.approx(1.0)
    assert midnight(datetime(2025, 3, 2).date()) == datetime(2025, 3, 2).timestamp()


# --- `%mirai status` in a real kernel -----------------------------------------------------


@needs_genai_prices
@pytest.mark.kernel
def test_status_shows_session_and_notebook_totals_per_model_across_a_restart(tmp_path):
    config = NO_MEMORY + "limits: {budget_usd: {per_day: 5}}\n"
    with OfflineServer().start() as server:
        env = server_kernel_env(server.url, tmp_path, config, KEY)
        with Kernel(tmp_path, env) as k:
            k.run("%load_ext mirai_magics")
            shown = k.run("%%mirai\nhello").data("text/plain")[-1]
            k.run("%%mirai\nhello again")
            k.restart()
            k.run("%load_ext mirai_magics")
            k.run("%%mirai heavy\nafter the restart")
            status = k.run("%mirai status").text.splitlines()

    rows = read_calls(tmp_path / ".mirai" / "calls.sqlite", 10)
    mini = sum(r["cost"] for r in rows if r["model"] == "gpt-4o-mini")
    heavy = sum(r["cost"] for r in rows if r["model"] == "gpt-4o")
    assert f"≈ {usd(rows[0]['cost'])}" in shown
    assert len({r["notebook"] for r in rows}) == 1 and rows[0]["notebook"].startswith("dir:")

    def row(label: str) -> str:
        return next(m[1] for line in status if (m := re.match(rf"{label}  +(.*)$", line)))

    assert row("cost") == f"session {usd(heavy)} · notebook {usd(mini + heavy)}"
    assert row("cost gpt-4o-mini") == f"session $0 (0 calls) · notebook {usd(mini)} (2 calls)"
    assert row("cost gpt-4o") == f"session {usd(heavy)} (1 call) · notebook {usd(heavy)} (1 call)"
    assert row("budget today") == f"{usd(mini + heavy)} of $5.00 (limits.budget_usd.per_day)"


def test_a_key_set_after_load_makes_the_default_endpoint_paid():
    from mirai_magics.client.records import CallRecord
    from mirai_magics.config import parse_config
    from mirai_magics.pricing import Prices

    env: dict[str, str] = {}
    prices = Prices.from_config(parse_config(""), env)  # built at `%load_ext`, no key yet
    record = CallRecord(profile="main", model="gpt-4o-mini")
    assert prices.free(record)
    env["OPENAI_API_KEY"] = "sk-test-cost-set-later-0123456789"  # set in the next cell
    assert not prices.free(record)


def test_every_dated_name_form_falls_back_to_its_undated_price():
    from mirai_magics.pricing import undated

    assert undated("gpt-4o-2024-08-06") == "gpt-4o"
    assert undated("claude-3-5-sonnet-20241022") == "claude-3-5-sonnet"
    assert undated("gpt-4-0613") == "gpt-4" and undated("gpt-35-turbo-0125") == "gpt-35-turbo"
    assert undated("o1-preview") == "o1-preview"


def test_a_reload_that_rebuilds_the_policy_keeps_the_sessions_spend(
    make_session, offline_server, tmp_path, monkeypatch
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-cost-reload-0123456789")
    path = tmp_path / "mirai.yaml"
    body = (
        "endpoint: {{base_url: '" + offline_server.url + "'}}\n"
        "pricing: {{gpt-4o-mini: {{input: 10, output: 10}}}}\n"
        "limits: {{budget_usd: {{per_session: 1.0}}, rps: {{chat: {rps}}}}}\n"
        "context: {{rag: {{enabled: false}}}}\n"
    )
    path.write_text(body.format(rps=5))
    from mirai_magics.session import Session

    with Session(config_path=str(path)) as session:
        session.chat([{"role": "user", "content": "hello"}])
        spent = session.policy.spend.session_total
        path.write_text(body.format(rps=6))  # another limit: the Policy is rebuilt
        before = session.policy
        session.reload()
        assert session.policy is not before and spent > 0
        assert session.policy.spend.session_total == spent
