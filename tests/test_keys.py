"""API keys: env only, ages by a short hash in keys.json, the rotation warning, a 401 rotation."""

from __future__ import annotations

import json
import time

import pytest

from mirai_magics.client.keys import DAY_S, KEY_FILE, KeyAges, key_id
from mirai_magics.config import Security, parse_config
from mirai_magics.errors import ClientRequestError, ConfigError
from mirai_magics.server import OfflineServer
from mirai_magics.session import Session
from mirai_magics.ui.cell import CellRequest, run_cell

KEY = "sk-test-keys-0123456789abcdef0123"  # make_session's key for this module
OLD_KEY = "sk-test-keys-old-AAAAAAAAAAAAAAAA"
NEW_KEY = "sk-test-keys-new-BBBBBBBBBBBBBBBB"
HELLO = [{"role": "user", "content": "hello"}]
WARNING = "key 97 days old: rotate it (security.rotation_interval_days = 90)"


class WallClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def files_text(home) -> str:
    """Every byte under the memory dir (keys.json, the call log and its WAL), as text."""
    return "".join(p.read_bytes().decode("latin-1") for p in home.rglob("*") if p.is_file())


# --- the schema -------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["file", "json", "vault"])
def test_a_key_source_other_than_env_is_refused_in_one_line(source):
    with pytest.raises(ConfigError) as caught:
        parse_config(f"security: {{api_key_source: {source}}}", "keys.yaml")
    message = str(caught.value)
    assert "\n" not in message
    assert f"security.api_key_source: must be 'env' (got '{source}')" in message


# --- key ages ---------------------------------------------------------------------------------


def test_ages_are_kept_by_short_hash_and_warned_once(tmp_path):
    clock, path = WallClock(), tmp_path / KEY_FILE
    ages = KeyAges(path, Security(), now=clock)
    ages.note(KEY)
    assert ages.warning() is None and ages.badge_flags() == []
    clock.now += 97 * DAY_S
    assert ages.warning() == WARNING
    assert ages.badge_flags() == [WARNING]
    assert ages.badge_flags() == []  # once per key and session
    assert WARNING in dict(ages.status_rows())["api key"]

    saved = json.loads(path.read_text())
    assert saved["first_seen"] == {key_id(KEY): 1_700_000_000.0}
    assert len(key_id(KEY)) == 12 and KEY not in path.read_text()

    again = KeyAges(path, Security(), now=clock)  # a new kernel: the age survives
    again.note(KEY)
    assert again.age_days() == pytest.approx(97)


def test_a_new_key_starts_young_and_rotation_reminders_can_be_off(tmp_path):
    clock, path = WallClock(), tmp_path / KEY_FILE
    KeyAges(path, Security(), now=clock).note(OLD_KEY)
    clock.now += 200 * DAY_S
    ages = KeyAges(path, Security(), now=clock)
    ages.note(NEW_KEY)
    assert ages.age_days() == 0 and ages.warning() is None
    assert set(json.loads(path.read_text())["first_seen"]) == {key_id(OLD_KEY), key_id(NEW_KEY)}
    quiet = KeyAges(path, Security(rotate_keys=False), now=clock)
    quiet.note(OLD_KEY)
    assert quiet.warning() is None and quiet.badge_flags() == []
    assert "rotation reminders off" in dict(quiet.status_rows())["api key"]


def test_an_unreadable_keys_file_is_a_status_notice_not_a_crash(tmp_path):
    path = tmp_path / KEY_FILE
    path.write_text("{not json")
    ages = KeyAges(path, Security(), now=WallClock())
    ages.note(KEY)
    rows = ages.status_rows()
    assert any(label == "notice" and "unreadable" in value for label, value in rows)
    assert key_id(KEY) in json.loads(path.read_text())["first_seen"]  # rewritten


def test_an_old_key_is_flagged_once_on_the_badge_and_in_status(make_session, isolated_home, capsys):
    isolated_home.mkdir(parents=True)
    first_seen = time.time() - 97 * DAY_S - 60
    (isolated_home / KEY_FILE).write_text(json.dumps({"first_seen": {key_id(KEY): first_seen}}))
    session = make_session()

    badges = []
    for text in ("first", "second"):
        request = CellRequest(text=text, profile="main", fmt="markdown", overrides={}, memory=False)
        request.stream = False
        assert run_cell(request, session, None, {}) is not None
        badges.append(capsys.readouterr().out)
    assert WARNING in badges[0] and WARNING not in badges[1]
    assert WARNING in dict(session.extra_status())["api key"]

    session.flush_logs()
    assert all(KEY not in text for text in badges)
    assert KEY not in files_text(isolated_home)


# --- rotation after a 401 ---------------------------------------------------------------------


@pytest.fixture
def strict_server():
    """An offline server that accepts NEW_KEY only (any other key: 401)."""
    srv = OfflineServer(expected_key=NEW_KEY).start()
    try:
        yield srv
    finally:
        srv.stop()


def statuses(server) -> list[int]:
    return [
        r["status"]
        for r in server.stats_snapshot()["recent"]
        if r["path"].endswith("/chat/completions")
    ]


def test_a_401_picks_up_a_key_rotated_in_the_environment(
    strict_server, monkeypatch, isolated_home, clock, sleeps
):
    monkeypatch.setenv("OPENAI_API_KEY", OLD_KEY)
    config = parse_config(f"endpoint: {{base_url: '{strict_server.url}'}}", "test.yaml")
    with Session(config, clock=clock, sleep=sleeps) as session:
        with pytest.raises(ClientRequestError) as caught:  # unchanged key: a one-line error
            session.chat(HELLO)
        assert "HTTP 401" in str(caught.value) and "\n" not in str(caught.value)
        assert OLD_KEY not in str(caught.value)
        assert statuses(strict_server) == [401]

        monkeypatch.setenv("OPENAI_API_KEY", NEW_KEY)  # rotated: no reload, no restart
        reply = session.chat(HELLO)
        assert reply.record.attempts == 2 and reply.record.retry_reasons == ["key_rotated"]
        assert statuses(strict_server) == [401, 401, 200]  # old key refused, then the new one

        assert session.chat(HELLO).record.attempts == 1  # the SDK keeps the new key
        assert statuses(strict_server) == [401, 401, 200, 200]
        assert dict(session.extra_status())["api key"].startswith(
            f"OPENAI_API_KEY · id {key_id(NEW_KEY)} · 0 days old"
        )
        session.flush_logs()

    saved = json.loads((isolated_home / KEY_FILE).read_text())["first_seen"]
    assert set(saved) == {key_id(OLD_KEY), key_id(NEW_KEY)}
    text = files_text(isolated_home)  # keys.json and the call log
    assert OLD_KEY not in text and NEW_KEY not in text


def test_a_401_with_a_rotated_key_is_retried_only_once(
    strict_server, monkeypatch, isolated_home, clock, sleeps
):
    strict_server.app.expected_key = "sk-nobody-has-this-key-000000000"
    monkeypatch.setenv("OPENAI_API_KEY", OLD_KEY)
    config = parse_config(f"endpoint: {{base_url: '{strict_server.url}'}}", "test.yaml")
    with Session(config, clock=clock, sleep=sleeps) as session:
        session.warm()  # the SDK holds OLD_KEY
        monkeypatch.setenv("OPENAI_API_KEY", NEW_KEY)
        with pytest.raises(ClientRequestError):
            session.chat(HELLO)
        assert statuses(strict_server) == [401, 401]  # old key, new key once, then the error
        assert session.records[-1].retry_reasons == ["key_rotated"]
