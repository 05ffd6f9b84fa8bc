"""One redaction pass: the corpus (recall 1.0, no look-alike touched), configured names, and
a password assigned or interpolated in a real kernel, followed to the server and to disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kernelutil import REPO, Kernel, server_kernel_env
from redaction_corpus import LOOKALIKES, SECRETS

from mirai_magics import redact as redaction
from mirai_magics.config import parse_config
from mirai_magics.errors import ConfigError
from mirai_magics.redact import REDACTED, redact
from mirai_magics.server import OfflineServer
from mirai_magics.ui.cell import CellRequest
from mirai_magics.ui.interpolate import interpolate

KEY = "sk-test-redaction-0123456789abcdef"


@pytest.fixture(autouse=True)
def default_names():
    """Every test starts, and leaves, with the default secret names."""
    redaction.configure()
    yield
    redaction.configure()


def request(text: str, **kwargs) -> CellRequest:
    return CellRequest(text=text, profile="main", fmt="markdown", overrides={}, **kwargs)


# --- the corpus ------------------------------------------------------------------------------


def test_the_corpus_holds_30_secret_shapes_and_30_lookalikes():
    assert len(SECRETS) >= 30 and len(LOOKALIKES) >= 30


@pytest.mark.parametrize(("text", "secret"), SECRETS, ids=[t[:40] for t, _ in SECRETS])
def test_every_secret_shape_is_redacted_once_and_for_all(text, secret):
    once = redact(text)
    assert secret not in once and REDACTED in once
    assert redact(once) == once  # idempotent: the call log's request hash relies on it


@pytest.mark.parametrize("text", LOOKALIKES, ids=[t[:40] for t in LOOKALIKES])
def test_no_lookalike_is_touched(text):
    assert redact(text) == text


def test_a_url_keeps_its_scheme_user_and_host():
    line = "Error: postgresql://admin:pw@db.internal:5432/sales refused"
    assert redact(line) == f"Error: postgresql://admin:{REDACTED}@db.internal:5432/sales refused"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("curl -u ana:hunter2 https://h", f"curl -u ana:{REDACTED} https://h"),
        ("curl --user ana:pw-77 https://h", f"curl --user ana:{REDACTED} https://h"),
        ("curl --user=ana:pw-77 https://h", f"curl --user=ana:{REDACTED} https://h"),
        ("curl -u 'ana:two words' https://h", f"curl -u 'ana:{REDACTED}' https://h"),
        ('run(["curl", "-u", "ana:pw-77", url])', f'run(["curl", "-u", "ana:{REDACTED}", url])'),
        (
            "curl -X POST \\\n  -u ana:pw-77 \\\n  https://h",
            f"curl -X POST \\\n  -u ana:{REDACTED} \\\n  https://h",
        ),
        ("docker run -u app:app img", "docker run -u app:app img"),  # user:group, no curl
        ("curl https://x | sudo -u app:app tee f", "curl https://x | sudo -u app:app tee f"),
        ("curl https://x; sudo -u app:app ls", "curl https://x; sudo -u app:app ls"),
        ("curl https://x && sudo -u u:g ls", "curl https://x && sudo -u u:g ls"),
        ("curl https://x & sudo -u u:g ls", "curl https://x & sudo -u u:g ls"),
        ("curl https://x \\\n | sudo -u u:g ls", "curl https://x \\\n | sudo -u u:g ls"),
        (  # quoted ; | & belong to curl's arguments; an unquoted & in a URL is no separator
            "curl -H 'Accept: a; b|c' 'https://h?a=1&b=2' -u ana:pw-77",
            f"curl -H 'Accept: a; b|c' 'https://h?a=1&b=2' -u ana:{REDACTED}",
        ),
        ("curl https://h?a=1&b=2 -u ana:pw-77", f"curl https://h?a=1&b=2 -u ana:{REDACTED}"),
        ("curl docs: -u, --user <user:password>", "curl docs: -u, --user <user:password>"),
        ("curl -u YOUR_USER:YOUR_PASS https://h", "curl -u YOUR_USER:YOUR_PASS https://h"),
    ],
)
def test_curl_user_keeps_the_user_and_drops_the_password(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: Basic {REDACTED}"),
        ("-H 'authorization: basic dXNlcjpwYXNz'", f"-H 'authorization: basic {REDACTED}'"),
        ("Proxy-Authorization: Basic dXNlcjpwYXNz", f"Proxy-Authorization: Basic {REDACTED}"),
        (
            'META["HTTP_AUTHORIZATION"] = "Basic dXNlcjpwYXNz"',
            f'META["HTTP_AUTHORIZATION"] = "Basic {REDACTED}"',
        ),
        ('{"Authorization": "Token ab12cd34"}', f'{{"Authorization": "Token {REDACTED}"}}'),
        ("Authorization: Bearer AbCdEfGhIj", f"Authorization: Bearer {REDACTED}"),
        ("The Authorization: Basic scheme sends", "The Authorization: Basic scheme sends"),
        ('"X-Api-Key: abc123def456"', f'"X-Api-Key: {REDACTED}"'),
        ('\\"x-api-key: abc123def456\\r\\n\\"', f'\\"x-api-key: {REDACTED}\\r\\n\\"'),
        ('raise ValueError("password: required")', 'raise ValueError("password: required")'),
        ("'Password: hunter'", "'Password: hunter'"),  # one word in a message
        ("'Password: hunter2'", f"'Password: {REDACTED}'"),  # letters and digits
        ('"X-Api-Key: abcdef"', f'"X-Api-Key: {REDACTED}"'),  # a header name takes a word
    ],
)
def test_a_credential_header_keeps_its_name_and_scheme(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password = hunter2", f"password = {REDACTED}"),
        ("  db_password = two words  # prod", f"  db_password = {REDACTED}  # prod"),
        ("token = s3cr3t-tok ; old\r\n", f"token = {REDACTED} ; old\r\n"),
        ("password =hunter2", f"password ={REDACTED}"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG", f"aws_secret_access_key = {REDACTED}"),
        ("password = getpass.getpass()", "password = getpass.getpass()"),
        ("password = (\n", "password = (\n"),  # continued on the next line
        ("if ok: password = hunter2", "if ok: password = hunter2"),  # not an INI line
        ("api_key = openai_api_key", "api_key = openai_api_key"),  # a variable passed on
        ("    password = pw", "    password = pw"),  # a bare name is a variable ...
        ("password = hunter2", f"password = {REDACTED}"),  # ... unless letters and digits
        ("[db]\npassword = hunter\n", f"[db]\npassword = {REDACTED}\n"),  # or in a section
        ("[db]\r\npassword = tok with spaces 42", f"[db]\r\npassword = {REDACTED}"),
        ("secret = derive(pw) if pw else None", "secret = derive(pw) if pw else None"),
        ("token = await fetch_token(user, pw)", "token = await fetch_token(user, pw)"),
        ("api_key = key_from_vault or fallback", "api_key = key_from_vault or fallback"),
        ("password = lambda: pw", "password = lambda: pw"),
        ("secret = prefix + suffix", "secret = prefix + suffix"),  # an operator
        ("token = resp.json", "token = resp.json"),  # an attribute
        ("[db]\npassword = and or not", f"[db]\npassword = {REDACTED}"),  # INI text: words
    ],
)
def test_an_ini_value_is_the_rest_of_its_line(text, expected):
    assert redact(text) == expected


def test_a_triple_quoted_value_is_redacted_inside_its_quotes():
    code = "db_password = \"\"\"hunter2\"\"\"\npem_secret = '''line one\nline two'''\n"
    expected = f"db_password = \"\"\"{REDACTED}\"\"\"\npem_secret = '''{REDACTED}'''\n"
    assert redact(code) == expected


def test_a_yaml_value_ends_at_a_crlf_line_end():
    text = "db:\r\n  password: hunter2\r\n  user: ana\r\n"
    assert redact(text) == f"db:\r\n  password: {REDACTED}\r\n  user: ana\r\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('password = st.text_input("Password:", type="password")', None),
        ('pw = input("Password: ") or "default"', None),
        ("password = getpass.getpass('Password: ')  # don't hard-code 'secrets'", None),
        ('print("Token: ", token, "ok")', None),
        ('headers = ["X-Api-Key: " + key, "Accept: json"]', None),
        ('{"code": "st.text_input(\\"Password:\\", type=\\"password\\")"}', None),  # JSON text
        ('{"password": "hunter2"}', f'{{"password": "{REDACTED}"}}'),  # a key, not a label
        ("s = 'password: \"hunter2\"'", f"s = 'password: \"{REDACTED}\"'"),  # YAML in a str
        # what made the line code (s3.cr3t, an attribute) was a secret: the line is INI text
        ("password = x token=s3.cr3t", f"password = {REDACTED}"),
    ],
)
def test_a_label_in_a_string_takes_no_value_and_one_pass_is_the_fixed_point(text, expected):
    expected = text if expected is None else expected
    assert redact(text) == expected
    assert redact(expected) == expected


def test_glued_key_shapes_are_both_redacted_in_one_pass():
    glued = "AIzaSyA-abc123def456ghi789jkl012mno345p" + "glpat-abcdefghij1234567890"
    assert redact(glued) == REDACTED + REDACTED


def _json_texts():
    """Every corpus text (secret or look-alike), and its secret, as JSON string values under
    several keys, nested and not, ASCII-escaped and not."""
    values = [text for text, _ in SECRETS] + LOOKALIKES
    values += ['token=abc"def', "token=abc\\def", "password=a\\", 'x "password: y" z']
    keys = ("content", "q", "password", "api_key", "Authorization", "cmd")
    for i, value in enumerate(values):
        key = keys[i % len(keys)]
        obj = {key: value, "n": 1, "list": [value, {"token": value, key: f"{value}\n{value}"}]}
        for ascii_only in (True, False):
            yield json.dumps(obj, ensure_ascii=ascii_only)


def test_redacting_json_text_leaves_valid_json():
    broken = []
    for text in _json_texts():
        once = redact(text)
        try:
            json.loads(once)
        except ValueError:
            broken.append((text, once))
        assert redact(once) == once, text
    assert not broken, broken[:3]


def test_a_value_in_json_text_ends_at_an_escape():
    text = json.dumps({"q": 'password=abc"def'})  # JSON text: password=abc\"def
    assert redact(text) == '{"q": "password=' + REDACTED + '\\"def"}'
    lines = json.dumps({"env": "PASSWORD=hunter2\nUSER=ana"})  # JSON text: \n ends the line
    assert json.loads(redact(lines)) == {"env": f"PASSWORD={REDACTED}\nUSER=ana"}


def test_in_json_text_an_escaped_line_end_ends_a_line_and_a_word():
    key, basic = "sk-proj-AbCdEf0123456789GhIjKlMnOpQrStUv", "dXNlcjpwYXNz"
    text = json.dumps({"c": f"key:\n{key}\nAuthorization: Basic {basic}\tok"})
    assert redact(text) == json.dumps(
        {"c": f"key:\n{REDACTED}\nAuthorization: Basic {REDACTED}\tok"}
    )
    shell = json.dumps({"c": "curl x\nsudo -u app:app ls"})  # \n ends the curl command
    assert redact(shell) == shell


def test_a_word_is_no_token_but_any_value_is_a_password():
    assert redact("token = 'the'") == "token = 'the'"
    assert redact('auth_token = "Hello"') == 'auth_token = "Hello"'
    assert redact('token = "a8f3k2"') == f'token = "{REDACTED}"'  # short, but not a word
    assert redact('token = "Tokenizer"') == f'token = "{REDACTED}"'  # a word of 8+ letters
    assert redact('password = "hunter2"') == f'password = "{REDACTED}"'
    assert redact('password = "the"') == f'password = "{REDACTED}"'


def test_a_key_name_given_an_identifier_keeps_it_but_not_key_material():
    assert redact('cache_key = "user_profile_v2"') == 'cache_key = "user_profile_v2"'
    assert redact('cache_key = "u8ser_pr0file"') == f'cache_key = "{REDACTED}"'
    assert redact('api_key = "user_profile_v2"') == f'api_key = "{REDACTED}"'  # a plain entry


def test_new_key_shapes_are_redacted_anywhere_and_refused_in_a_config():
    shapes = [
        "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123",
        "glpat-" + "x1" * 10,
        "npm_" + "a1B2" * 9,
        "ya29." + "a0AfH6SMBx3-Zq8r1Ytb4",
    ]
    for shape in shapes:
        assert redact(f"({shape})") == f"({REDACTED})", shape
        assert redaction.looks_like_key(shape), shape
    assert redact("hf_" + "a" * 29) == "hf_" + "a" * 29  # too short to be a token


LLM_SHAPES = {
    "Groq": "gsk_" + "a1B2c3D4e5" * 4,
    "Replicate": "r8_" + "Ab3dE" * 6,
    "LangSmith": "lsv2_pt_" + "0a1b2c3d4e" * 2,
    "LangSmith service key": "lsv2_sk_" + "AbCd1234" * 3,
    "Perplexity": "pplx-" + "x9Y8z7W6v5" * 4,
    "PyPI": "pypi-AgEI" + "cHlwaS5v_-" * 5,
    "GitLab deploy": "gldt-" + "Zy9Xw8Vu7T" * 2,
    "GitLab runner": "glrt-" + "k3yK3yK3yK" * 2,
    "Stripe webhook": "whsec_" + "Q1w2E3r4T5y6" * 2,
    "Slack app": "xapp-1-A0123456789-1234567890123-ab12ab12",
    "SendGrid": "SG." + "aB3" * 7 + "x." + "Zy9_-" * 8 + "xyz",
    "DigitalOcean": "dop_v1_" + "0123456789abcdef" * 4,
    "Grafana": "glsa_" + "Gr4f4n4T0k3n" * 3,
}


@pytest.mark.parametrize("shape", list(LLM_SHAPES.values()), ids=list(LLM_SHAPES))
def test_llm_notebook_key_shapes_are_redacted_anywhere_and_refused_in_a_config(shape):
    assert redact(f"({shape})") == f"({REDACTED})"
    assert redact(f"k = '{shape}'\n") == f"k = '{REDACTED}'\n"
    assert not redaction.looks_like_key(shape[:12])  # too short to be one
    with pytest.raises(ConfigError) as caught:
        parse_config(f"endpoint: {{organization: '{shape}'}}", "my.yaml")
    message = str(caught.value)
    assert "endpoint.organization" in message and "looks like an API key" in message


def test_a_slack_webhook_keeps_its_url_but_not_its_secret_part():
    url = "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
    assert redact(f"post({url!r})") == (
        f"post('https://hooks.slack.com/services/T00000000/B00000000/{REDACTED}')"
    )
    assert redaction.looks_like_key(url)


def test_the_benchmark_prints_recall_1_and_its_precision():
    bench = REPO / "benchmarks" / "bench_redaction.py"
    out = subprocess.run(
        [sys.executable, str(bench), "--repeat", "3"], capture_output=True, text=True, check=True
    ).stdout
    assert "recall    = 1.000" in out and "precision = 1.000" in out
    assert "µs/KB" in out and "old pass" in out


# --- configured names --------------------------------------------------------------------------


def test_configured_names_replace_the_defaults_and_a_session_restores_its_own(make_session):
    make_session("security: {redact_assignments: [pin_code, 'vault_*']}")
    assert redact("pin_code = '4711-0815'") == f"pin_code = '{REDACTED}'"
    assert redact("VAULT_ROLE=r0le-4f9a8b7c") == f"VAULT_ROLE={REDACTED}"  # glob: key-like
    assert redact("vault_mode = 'standby'") == "vault_mode = 'standby'"  # glob: a plain word
    assert redact("db_password = 'hunter2'") == "db_password = 'hunter2'"  # not named any more
    make_session()  # a session with the default names sets them again
    assert redact("db_password = 'hunter2'") == f"db_password = '{REDACTED}'"


def test_a_bad_name_in_the_config_is_refused_in_one_line():
    with pytest.raises(ConfigError) as caught:
        parse_config("security: {redact_assignments: ['db password']}", "bad.yaml")
    assert "redact_assignments" in str(caught.value) and "\n" not in str(caught.value)


# --- explicit interpolation ---------------------------------------------------------------------


def test_an_interpolated_secret_is_sent_as_asked_and_stored_redacted(
    make_session, offline_server, isolated_home
):
    session = make_session(NO_MEMORY + "observability: {logging: {include_prompts: true}}")
    secret = "hunter2-session-5e1d"
    template = "Log in with {db_password} as {user}."
    text = interpolate(template, {"db_password": secret, "user": "ana"}).text
    assert text.references == (("db_password", secret), ("user", "ana"))

    prepared = session.prepare(text, request(template))
    reply = session.chat(prepared.messages, "main")
    session.history.append_turn(prepared.user_text, reply.text)  # as the cell does
    sent = offline_server.stats_snapshot().recent[-1]["body"]["messages"]
    assert sent[-1]["content"] == f"Log in with {secret} as ana."  # sent as asked

    later = session.prepare("And now?", request("And now?"))
    session.chat(later.messages, "main")
    again = json.dumps(offline_server.stats_snapshot().recent[-1]["body"]["messages"])
    assert secret not in again and f"Log in with {REDACTED} as ana." in again
    session.flush_logs()
    stored = b"".join(p.read_bytes() for p in sorted(isolated_home.glob("calls.*")))
    assert secret.encode() not in stored and f"with {REDACTED} as ana".encode() in stored


def test_a_plain_name_interpolated_is_not_remembered(make_session, offline_server):
    session = make_session(NO_MEMORY)
    text = interpolate("Summarise {region}.", {"region": "north-east-7"}).text
    prepared = session.prepare(text, request("Summarise {region}."))
    session.history.append_turn(prepared.user_text, "ok")
    assert session.history.window()[0]["content"] == "Summarise north-east-7."


# --- in a real kernel: assigned, failed on, fixed, interpolated ------------------------------

NO_MEMORY = "context: {rag: {enabled: false}}\n"
PASSWORD = "hunter2-kernel-7f3a"
SENT = "hunter2-sent-91c2"
KERNEL_CONFIG = (
    "context: {rag: {min_score: 0.1}}\n"  # the server's bag-of-words vectors score lower
    "observability: {logging: {include_prompts: true}}\n"
)


@pytest.fixture(scope="module")
def server():
    with OfflineServer().start() as srv:
        yield srv


def bodies(server: OfflineServer, path: str = "") -> list[dict]:
    return [r["body"] for r in server.stats_snapshot()["recent"] if r["path"].endswith(path)]


def stored_files(home: Path) -> dict[str, bytes]:
    """Every file mirai wrote under ``home`` (memory.sqlite and its -wal, calls.sqlite,
    calls.jsonl, the cassette), raw."""
    return {p.name: p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()}


def flush(kernel: Kernel) -> None:
    kernel.run(
        "_s = get_ipython().magics_manager.registry['MiraiMagics'].session\n"
        "_s.flush_logs(); _s.memory.flush(10)  # mirai: no-index"
    )


@pytest.mark.kernel
def test_an_assigned_password_never_leaves_the_kernel_nor_reaches_disk(server, tmp_path):
    server.reset()
    env = server_kernel_env(server.url, tmp_path, KERNEL_CONFIG, KEY)
    env["MIRAI_RECORD"] = str(tmp_path / "notebook.cassette.sqlite")
    with Kernel(tmp_path, env) as k:
        k.run("%load_ext mirai_magics")
        k.run(f'db_password = "{PASSWORD}"\nsales_db = "postgresql://db.internal/sales"')
        k.run(
            "def connect(user):\n"
            '    raise ConnectionError(f"postgresql://{user}:{db_password}@db.internal/sales '
            'refused the connection")\n'
            "connect('admin')",
            allow_error=True,
        )
        fixed = k.run("%mirai fix")
        k.run("%%mirai\nWhich sales_db password does this notebook use?")
        k.run("%%mirai\nAnd which user does it connect as?")
        flush(k)
        on_disk = stored_files(tmp_path)  # with the kernel alive: the WAL files are there
    on_disk.update(stored_files(tmp_path))
    every = json.dumps(bodies(server))
    fix = next(b for b in bodies(server, "/chat/completions") if "raised an error" in str(b))
    embedded = json.dumps(bodies(server, "/embeddings"))
    assert PASSWORD not in every and "[REDACTED]" in every and KEY not in every
    assert f"postgresql://admin:{REDACTED}@db.internal/sales" in fix["messages"][-1]["content"]
    assert "db_password" in embedded and PASSWORD not in embedded  # the cells were embedded
    assert PASSWORD not in fixed.text  # nor in what the notebook saves
    later = bodies(server, "/chat/completions")[-1]["messages"]
    assert any("raised an error" in m["content"] for m in later)  # the fix, through history
    blocks = [m["content"] for b in bodies(server) for m in b.get("messages", [])]
    blocks = [text for text in blocks if text.startswith("Earlier cells")]
    assert any(f'db_password = "{REDACTED}"' in text for text in blocks)  # retrieved, redacted
    names = set(on_disk)
    assert {"memory.sqlite", "calls.sqlite", "calls.jsonl", "notebook.cassette.sqlite"} <= names
    assert "memory.sqlite-wal" in names and "calls.sqlite-wal" in names
    for name, data in on_disk.items():
        assert PASSWORD.encode() not in data, name
    memory = on_disk["memory.sqlite-wal"] + on_disk["memory.sqlite"]
    assert f'db_password = "{REDACTED}"'.encode() in memory


@pytest.mark.kernel
def test_an_interpolated_password_is_sent_once_and_stored_redacted(server, tmp_path):
    server.reset()
    env = server_kernel_env(server.url, tmp_path, KERNEL_CONFIG, KEY)
    env["MIRAI_RECORD"] = str(tmp_path / "notebook.cassette.sqlite")
    with Kernel(tmp_path, env) as k:
        k.run("%load_ext mirai_magics")
        k.run(f'db_password = "{SENT}"')
        k.run("%%mirai --no-memory\nIs {db_password} a strong database password?")
        k.run("%%mirai\nSuggest a stronger one.")
        history = k.run(
            "print(get_ipython().magics_manager.registry['MiraiMagics'].session.history.window())"
        ).text
        flush(k)
        on_disk = stored_files(tmp_path)
    chats = bodies(server, "/chat/completions")
    assert chats[0]["messages"][-1]["content"] == f"Is {SENT} a strong database password?"
    embedded = json.dumps(bodies(server, "/embeddings"))
    assert SENT not in json.dumps(chats[1:]) and SENT not in embedded
    assert f"Is {REDACTED} a strong database password?" in json.dumps(chats[1]["messages"])
    assert SENT not in history and REDACTED in history
    for name, data in on_disk.items():
        assert SENT.encode() not in data, name
    assert f"Is {REDACTED} a strong".encode() in on_disk["notebook.cassette.sqlite"]


def test_a_background_cell_is_sent_as_asked_and_stored_redacted(
    make_session, offline_server, isolated_home
):
    from mirai_magics.jobs.items import payload

    session = make_session(NO_MEMORY)
    secret = "hunter2-background-7c2a"
    interpolate("{db_password}", {"db_password": secret})  # remembered as interpolated
    item = payload([{"role": "user", "content": f"password={secret}"}], "main")
    live = session.jobs.submit("cell", "main", [item], label=f"password={secret}")
    assert session.jobs.wait(live.id, timeout_s=20).state == "done"
    sent = offline_server.stats_snapshot().recent[-1]["body"]["messages"]
    assert sent[-1]["content"] == f"password={secret}"  # sent as asked
    assert session.jobs.results(live.id)[0].text.endswith(f"password={REDACTED}")  # stored
    session.close()
    stored = b"".join(p.read_bytes() for p in sorted(isolated_home.glob("jobs.sqlite*")))
    assert stored and secret.encode() not in stored  # payload, label and answer on disk


def test_tokenizer_special_tokens_are_not_secrets():
    code = 'pad_token = "[PAD]"\ncls_token = "[CLS]"\neos_token = "<|endoftext|>"'
    assert redact(code) == code
