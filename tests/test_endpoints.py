"""An endpoint per profile: local servers on their own ports, each asserting what it saw.

One server stands for OpenAI (the default endpoint, its own key), one for a local Ollama or
vLLM on another port (no key: ``EMPTY``), one for an Azure resource (``api-version`` query,
``api-key`` header). Profiles reach their own server with their own key, headers and query;
fallback crosses endpoints; `%mirai models` lists each; ``!replace`` replaces the profile set;
`mirai check-config` names each value's layer; and every README recipe makes a call.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from redisutil import redis_server  # noqa: F401  (fixture)

from mirai_magics.config import load_config, parse_config
from mirai_magics.errors import ConfigError, MiraiError
from mirai_magics.server import OfflineServer
from mirai_magics.session import Session
from mirai_magics.ui.models_cmd import models_command

KEY = "sk-test-endpoints-0123456789abcdef"
AZURE_KEY = "sk-test-azure-endpoint-0123456789"
AZURE_VERSION = "2024-10-21"
README = Path(__file__).resolve().parent.parent / "README.md"
SEED = Path(os.environ.get("MIRAI_SEED_CONFIG", "/work/shared/seed/openai_config.yaml"))
HELLO = "Say hello."


@pytest.fixture
def openai_server():
    """The default endpoint: accepts only KEY, as Bearer."""
    with OfflineServer(expected_key=KEY).start() as srv:
        yield srv


@pytest.fixture
def local_server():
    """An Ollama/vLLM on another port: no key of ours, so it accepts only ``EMPTY``."""
    with OfflineServer(
        expected_key="EMPTY", models=("llama3.2", "nomic-embed-text")
    ).start() as srv:
        yield srv


@pytest.fixture
def azure_server():
    """An Azure OpenAI resource: api-version query and api-key header on classic paths."""
    with OfflineServer(azure_api_version=AZURE_VERSION, expected_key=AZURE_KEY).start() as srv:
        yield srv


@pytest.fixture
def make(monkeypatch, clock, sleeps):
    """``make(yaml_text)``: a Session on fake time; keys in the environment as a user sets them."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", AZURE_KEY)
    made: list[Session] = []

    def build(text: str, fake_time: bool = True) -> Session:
        timing = {"clock": clock, "sleep": sleeps} if fake_time else {}
        session = Session(parse_config(text, "endpoints.yaml"), **timing)
        made.append(session)
        return session

    yield build
    for session in made:
        session.close()


def three_endpoints(
    openai_server,
    local_server,
    azure_server,
    extra: str = "",
    *,
    chain: str = "[heavy, main, local-llama]",
    profiles: str = "",
) -> str:
    return f"""
endpoint: {{base_url: "{openai_server.url}"}}
endpoints:
  local:
    base_url: "{local_server.url}"
    api_key_env_var: null
    default_headers: {{x-team: data-science}}
    default_query: {{tenant: lab}}
  azure:
    base_url: "{azure_server.base_url}"
    api_version: "{AZURE_VERSION}"
    api_key_env_var: AZURE_OPENAI_API_KEY
models:
  local-llama: {{name: llama3.2, endpoint: local, max_tokens: 300}}
  azure-chat: {{name: chat-prod, endpoint: azure, max_tokens: 300}}
{profiles}
degradation: {{fallback_chain: {chain}}}
context: {{rag: {{enabled: false}}}}
{extra}"""


def seen(server) -> list[dict]:
    return [r for r in server.stats_snapshot()["recent"] if r["path"].endswith("completions")]


# --- profiles reach their own endpoint --------------------------------------------------------


def test_each_profile_reaches_its_own_endpoint_with_its_own_key_headers_and_query(
    make, openai_server, local_server, azure_server
):
    session = make(three_endpoints(openai_server, local_server, azure_server))
    replies = {p: session.chat(HELLO, p) for p in ("main", "local-llama", "azure-chat")}
    assert {p: r.record.endpoint for p, r in replies.items()} == {
        "main": None,
        "local-llama": "local",
        "azure-chat": "azure",
    }
    (openai,), (local,), (azure,) = seen(openai_server), seen(local_server), seen(azure_server)
    # each server checks its key (expected_key): a 200 means the right key came, the right way
    assert (openai["model"], openai["auth"], openai["status"]) == ("gpt-4o-mini", "bearer", 200)
    assert (local["model"], local["auth"], local["status"]) == ("llama3.2", "bearer", 200)
    assert local["headers"]["x-team"] == "data-science" and local["query"] == "tenant=lab"
    assert "x-team" not in openai["headers"] and openai["query"] == ""
    assert azure["path"] == "/openai/deployments/chat-prod/chat/completions"
    assert (azure["query"], azure["auth"], azure["status"]) == (
        f"api-version={AZURE_VERSION}",
        "api-key",
        200,
    )


def test_an_azure_shaped_server_refuses_what_azure_refuses(azure_server):
    from openai import AzureOpenAI, NotFoundError, OpenAI

    def chat(client):
        return client.chat.completions.create(model="chat-prod", messages=[{"role": "user"}])

    old = AzureOpenAI(
        azure_endpoint=azure_server.base_url,
        api_version="2023-05-15",
        api_key=AZURE_KEY,
        max_retries=0,
    )
    dropped = OpenAI(  # the classic URL as a plain base URL: its api-version is lost
        base_url=f"{azure_server.base_url}/openai/deployments/chat-prod",
        api_key=AZURE_KEY,
        max_retries=0,
    )
    plain = OpenAI(base_url=f"{azure_server.base_url}/v1", api_key=AZURE_KEY, max_retries=0)
    for client in (old, dropped, plain):
        with pytest.raises(NotFoundError, match="Resource not found"):
            chat(client)
    assert [r["status"] for r in azure_server.stats_snapshot()["recent"]] == [404, 404, 404]


def test_a_named_endpoint_without_its_key_refuses_in_one_line_and_sends_nothing(
    make, openai_server, local_server, azure_server, monkeypatch
):
    session = make(three_endpoints(openai_server, local_server, azure_server))
    monkeypatch.delenv("AZURE_OPENAI_API_KEY")
    with pytest.raises(ConfigError) as refused:
        session.chat(HELLO, "azure-chat")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("endpoints.azure: $AZURE_OPENAI_API_KEY is not set")
    assert azure_server.stats_snapshot()["requests"] == 0


def test_a_rotated_key_of_a_named_endpoint_is_picked_up_after_a_401(
    make, openai_server, local_server, azure_server, monkeypatch
):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "sk-test-azure-old-key-0123456789")
    session = make(three_endpoints(openai_server, local_server, azure_server))
    session.chat(HELLO, "main")  # the clients exist; the Azure one is built on first use
    with pytest.raises(MiraiError, match="HTTP 401"):
        session.chat(HELLO, "azure-chat")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", AZURE_KEY)  # rotated in the environment
    reply = session.chat(HELLO, "azure-chat")
    assert "key_rotated" in reply.record.retry_reasons
    assert [r["status"] for r in seen(azure_server)] == [401, 401, 200]


# --- fallback across endpoints and breakers per endpoint ----------------------------------------


def test_an_endpoint_down_falls_back_to_a_profile_on_another_endpoint(
    make, openai_server, local_server, azure_server
):
    session = make(three_endpoints(openai_server, local_server, azure_server))
    openai_server.set_faults(down=True)
    reply = session.chat(HELLO, "heavy")
    record = reply.record
    assert (record.profile, record.model, record.endpoint) == ("local-llama", "llama3.2", "local")
    assert [(d.detail, d.from_profile, d.to_profile) for d in record.fallbacks] == [
        ("connection", "heavy", "local-llama")  # main is on the down endpoint: skipped
    ]
    tried = [r["model"] for r in openai_server.stats_snapshot()["recent"]]
    assert tried == ["gpt-4o"] * 4  # heavy's attempts; none for main's gpt-4o-mini
    assert [r["status"] for r in seen(local_server)] == [200]


def test_the_badge_names_the_endpoint_when_it_is_not_the_default(
    make, openai_server, local_server, azure_server
):
    from mirai_magics.ui.badges import badge_text

    session = make(three_endpoints(openai_server, local_server, azure_server))
    assert badge_text(session.chat(HELLO, "main").record).startswith("[mirai] main/gpt-4o-mini ·")
    openai_server.set_faults(down=True)
    badge = badge_text(session.chat(HELLO, "heavy").record)
    assert badge.startswith("[mirai] local-llama/llama3.2@local ·")
    assert "degraded heavy→local-llama (connection)" in badge


def test_rate_limits_of_the_first_endpoint_fall_back_to_the_local_model(
    make, openai_server, local_server, azure_server
):
    session = make(three_endpoints(openai_server, local_server, azure_server))
    openai_server.script(["429"] * 8)  # heavy's four attempts, then main's four
    reply = session.chat(HELLO, "heavy")
    assert [(d.detail, d.to_profile) for d in reply.record.fallbacks] == [
        ("429", "main"),
        ("429", "local-llama"),
    ]
    assert reply.record.endpoint == "local" and len(seen(local_server)) == 1


def test_a_connection_error_with_no_other_endpoint_left_ends_the_call(
    make, openai_server, local_server, azure_server
):
    servers = (openai_server, local_server, azure_server)
    session = make(three_endpoints(*servers, chain="[heavy, main]"))
    openai_server.set_faults(down=True)
    with pytest.raises(MiraiError):
        session.chat(HELLO, "heavy")
    assert [r["model"] for r in openai_server.stats_snapshot()["recent"]] == ["gpt-4o"] * 4


def test_breakers_are_per_endpoint_and_model(make, openai_server, local_server, azure_server):
    twin = "  twin: {name: gpt-4o, endpoint: local}"
    servers = (openai_server, local_server, azure_server)
    session = make(
        three_endpoints(*servers, "circuit_breaker: {failure_threshold: 2}", profiles=twin)
    )
    openai_server.set_faults(force_status=500)
    with pytest.raises(MiraiError):
        session.chat(HELLO, "creative")  # gpt-4o on the default endpoint; not in the chain
    reply = session.chat(HELLO, "twin")  # the same model id on the local endpoint still answers
    assert reply.record.endpoint == "local" and reply.record.breaker == "closed"
    assert session.breaker_states() == {"gpt-4o": "open", "local:gpt-4o": "closed"}


def test_redis_breaker_keys_name_the_endpoint_off_the_default_one(
    make,
    openai_server,
    local_server,
    azure_server,
    redis_server,  # noqa: F811
    monkeypatch,
):
    import redis

    monkeypatch.setenv("MIRAI_REDIS_URL", redis_server.url)
    extra = """
limits: {backend: redis}
redis: {namespace: ep}
circuit_breaker: {failure_threshold: 1}
"""
    servers = (openai_server, local_server, azure_server)
    session = make(three_endpoints(*servers, extra, chain="[main]"), False)
    for server in (openai_server, local_server):
        server.set_faults(force_status=500)
    for profile in ("main", "local-llama"):
        with pytest.raises(MiraiError):
            session.chat(HELLO, profile, max_tokens=10)
    session.close()  # flushes the breaker pushes to Redis
    keys = sorted(k.decode() for k in redis.Redis.from_url(redis_server.url).keys("ep:breaker:*"))
    assert keys == ["ep:breaker:gpt-4o-mini:open", "ep:breaker:local:llama3.2:open"]


# --- `%mirai models` ----------------------------------------------------------------------------


def test_models_lists_each_endpoint_and_marks_what_profiles_use(
    make, openai_server, local_server, azure_server, capsys
):
    session = make(three_endpoints(openai_server, local_server, azure_server))
    models_command(session, None)
    blocks = dict(_blocks(capsys.readouterr().out))
    assert blocks["default"][0].endswith("· key $OPENAI_API_KEY — 7 models")
    assert ["*", "gpt-4o-mini", "main"] in blocks["default"]
    assert ["*", "gpt-4o", "heavy,", "creative"] in blocks["default"]
    assert ["o1"] in blocks["default"]  # served, used by no profile
    assert ["!", "o1-preview", "reasoning", "(not", "in", "the", "list)"] in blocks["default"]
    assert blocks["local"][0].endswith("· no key (EMPTY) — 2 models")
    assert blocks["local"][1:] == [["*", "llama3.2", "local-llama"], ["nomic-embed-text"]]
    assert blocks["azure"][0].endswith(
        f"Azure api-version {AZURE_VERSION} · key $AZURE_OPENAI_API_KEY — 7 models"
    )
    assert ["!", "chat-prod", "azure-chat", "(not", "in", "the", "list)"] in blocks["azure"]
    asked = [r["path"] for s in (openai_server, local_server, azure_server) for r in s.stats.recent]
    assert asked == ["/v1/models", "/v1/models", "/openai/models"]


def test_models_says_in_one_line_when_an_endpoint_offers_no_list(make, openai_server, capsys):
    closed = OfflineServer().start()
    closed.stop()  # a port nobody listens on
    with OfflineServer(models=None).start() as listless:
        text = f"""
endpoint: {{base_url: "{openai_server.url}"}}
endpoints:
  proxy: {{base_url: "{listless.url}", api_key_env_var: null}}
  gone: {{base_url: "http://127.0.0.1:{closed.port}/v1", api_key_env_var: null}}
models:
  via-proxy: {{name: llama3.2, endpoint: proxy}}
  via-gone: {{name: qwen2.5, endpoint: gone}}
"""
        session = make(text)
        models_command(session, "proxy")
        models_command(session, "gone")
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("— does not offer a model list (HTTP 404)")
    assert out[1].split() == ["llama3.2", "via-proxy"]  # its profiles are still named
    assert out[3].endswith("— could not connect (connection refused)")
    assert out[4].split() == ["qwen2.5", "via-gone"]


def test_models_of_an_unknown_endpoint_names_the_known_ones(
    make, openai_server, local_server, azure_server
):
    session = make(three_endpoints(openai_server, local_server, azure_server))
    with pytest.raises(
        MiraiError, match="unknown endpoint 'lcoal' — use one of: default, local, azure"
    ):
        models_command(session, "lcoal")


def _blocks(text: str) -> list[tuple[str, list]]:
    """(endpoint, [its heading, then each model line's words]) of a listing."""
    out: list[tuple[str, list]] = []
    for line in text.splitlines():
        if line and not line.startswith((" ", "*")):
            out.append((line.split(" · ")[0], [line]))
        elif out and line.startswith(" "):
            out[-1][1].append(line.split())
    return out


# --- config: endpoints, !replace, provenance ----------------------------------------------------


def test_the_seeds_file_has_one_endpoint_the_default():
    config = load_config(SEED)
    assert config.endpoints == {}
    assert {p.endpoint for p in config.models.values()} == {None}


def test_replace_keeps_exactly_the_files_profiles(tmp_path):
    path = tmp_path / "ollama.yaml"
    path.write_text(
        "endpoints: {ollama: {base_url: 'http://localhost:11434/v1', api_key_env_var: null}}\n"
        "models: !replace\n"
        "  main: {name: llama3.2, endpoint: ollama}\n"
        "  embed: {name: nomic-embed-text, kind: embedding, endpoint: ollama}\n"
        "degradation: {fallback_chain: [main]}\n"
        "routing: {target: !replace {main: 100}}\n"
    )
    config = load_config(path)
    assert list(config.models) == ["main", "embed"]
    assert config.models["embed"].dimensions is None  # not the packaged 3072
    assert config.models["main"].temperature is None  # nothing merged in from gpt-4o-mini
    assert config.routing.target == {"main": 100}
    origins = config.origins()  # what the packaged layer wrote under models: is forgotten
    assert not [p for p in origins if p[:2] == ("models", "heavy")]
    assert origins[("models", "main", "name")] == "path"
    assert ("models", "main", "max_tokens") not in origins  # no layer wrote it: built-in
    plain = parse_config("models: {main: {name: llama3.2}}\n")
    assert "creative" in plain.models and plain.models["main"].temperature == 0.25  # merges


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("models: !replace [main]\n", "!replace goes on a mapping"),
        (
            "models: !replace\n  main: {name: llama3.2}\n",
            "degradation.fallback_chain[0]: unknown profile 'heavy' (known: main); the chain lists",
        ),
        (
            "models: !replace\n  main: {name: x}\ndegradation: {fallback_chain: [main]}\n",
            "routing.target.heavy: unknown profile (known: main); with models: !replace, write",
        ),
        ("models: {main: {endpoint: local}}\n", "models.main.endpoint: unknown endpoint 'local'"),
        ("endpoints: {default: {base_url: 'http://x/v1'}}\n", "endpoints.default: the name is"),
        (
            "endpoints: {az: {base_url: 'https://r.openai.azure.com/openai/v1/', "
            "api_version: '2024-10-21'}}\n",
            "endpoints.az: api_version is for Azure's classic form",
        ),
        (
            "endpoints: {lite: {base_url: 'http://x/v1', default_headers: {api-key: abc}}}\n",
            "endpoints.lite.default_headers.api-key: API keys must not be in the config file — "
            "set the environment variable named by endpoints.lite.api_key_env_var",
        ),
    ],
)
def test_endpoint_and_replace_mistakes_are_one_line(text, problem):
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "mine.yaml")
    assert problem in str(refused.value) and "\n" not in str(refused.value)


def test_check_config_names_the_layer_of_each_value(tmp_path):
    team = tmp_path / "team.yaml"
    team.write_text("models: {main: {temperature: 0.5}}\n")
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        "models: {main: {max_tokens: 900}}\n"
        "endpoints: {local: {base_url: 'http://localhost:11434/v1', api_key_env_var: null}}\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update(MIRAI_CONFIG=str(team), MIRAI_BASE_URL="http://127.0.0.1:9/v1")
    result = subprocess.run(
        [sys.executable, "-m", "mirai_magics.cli", "check-config", str(mine)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"→ MIRAI_CONFIG {team} → path {mine}" in out.splitlines()[0]
    main = out.split("\n  main:\n")[1].split("\n  heavy:\n")[0]
    assert "    name: gpt-4o-mini  # packaged" in main
    assert "    temperature: 0.5  # MIRAI_CONFIG" in main
    assert "    max_tokens: 900  # path" in main
    assert "    kind: chat  # built-in" in main
    assert "  base_url: http://127.0.0.1:9/v1  # env MIRAI_BASE_URL" in out
    assert "# api key (local): none (EMPTY is sent)" in out
    data = yaml.safe_load(out)  # the comments keep it YAML: the same effective config
    assert data["models"]["main"]["max_tokens"] == 900
    assert data["endpoints"]["local"]["base_url"] == "http://localhost:11434/v1"


CREDENTIAL_NAMES = [
    *("x-api-key", "Authorization", "Proxy-Authorization", "api-key", "X-Goog-Api-Key"),
    *("key", "token", "access_token", "X-Auth-Token", "client_secret", "password", "Cookie"),
    *("Ocp-Apim-Subscription-Key", "x-functions-key", "X-Access-Key", "X-Auth", "code", "sig"),
]


@pytest.mark.parametrize("section", ["default_headers", "default_query"])
@pytest.mark.parametrize("name", CREDENTIAL_NAMES)
def test_a_credential_header_or_query_name_takes_no_value_in_the_file(section, name):
    text = (
        "endpoints:\n  gw:\n    base_url: 'http://x/v1'\n"
        f"    {section}:\n      x-team: lab\n      {name}: plain-words\n"
    )
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "mine.yaml")
    line = str(refused.value)
    assert line.startswith(f"mine.yaml: line 6: endpoints.gw.{section}.{name}: API keys must not")
    assert "endpoints.gw.api_key_env_var" in line and "${ENV}" in line and "\n" not in line
    assert "plain-words" not in line


def test_an_env_reference_is_not_expanded_so_it_is_refused_too():
    text = "endpoints: {gw: {base_url: 'http://x/v1', default_headers: {x-api-key: '${GW_KEY}'}}}"
    with pytest.raises(ConfigError, match=r"default_headers\.x-api-key: .*no \$\{ENV\} refer"):
        parse_config(text, "mine.yaml")


def test_headers_and_query_named_like_no_credential_are_kept():
    text = (
        "endpoints: {gw: {base_url: 'http://x/v1', default_headers: {x-team: lab, "
        "x-litellm-tags: notebooks, OpenAI-Beta: assistants=v2, x-keyword: a}, "
        "default_query: {api-version: preview, tenant: lab, monkey: 'on'}}}\n"
    )
    gw = parse_config(text).endpoints["gw"]
    assert set(gw.default_headers) == {"x-team", "x-litellm-tags", "OpenAI-Beta", "x-keyword"}
    assert gw.default_query == {"api-version": "preview", "tenant": "lab", "monkey": "on"}
    counted = (  # names about tokens and secrets that carry none
        "endpoints: {gw: {base_url: 'http://x/v1', default_headers: {x-max-tokens: '512', "
        "X-Token-Budget: '9000', x-ratelimit-tokens: '1', X-Request-Tokenizer: o200k, "
        "X-Secret-Santa: 'yes'}, default_query: {max_tokens: '64', tokenizer: o200k}}}\n"
    )
    assert len(parse_config(counted).endpoints["gw"].default_headers) == 5


@pytest.mark.parametrize(
    "where",
    [
        "default_headers: {X-Forwarded: 'Basic dXNlcjpwYXNzd29yZA=='}",
        "default_query: {filter: 'Bearer abc123def456ghi789'}",
        "base_url: 'https://user:hunter2pass@proxy.example/v1'",
        "base_url: 'https://proxy.example/v1?api_key=abc123def456'",
    ],
)
def test_a_credential_in_a_sent_value_or_the_base_url_is_refused(where):
    text = f"endpoints:\n  gw:\n    base_url: 'http://x/v1'\n    {where}\n"
    text = text.replace("    base_url: 'http://x/v1'\n    base_url", "    base_url")
    with pytest.raises(ConfigError) as refused:
        parse_config(text, "mine.yaml")
    line = str(refused.value)
    assert "keys must not be in the config file" in line and "\n" not in line
    assert "hunter2pass" not in line and "dXNlcjpwYXNzd29yZA" not in line


def test_check_config_refuses_a_credential_header_naming_the_users_line(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        "endpoints:\n  gw:\n    base_url: 'http://x/v1'\n    default_headers:\n"
        "      Authorization: 'Basic dXNlcjpwYXNzd29yZA=='\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mirai_magics.cli", "check-config", str(mine)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    where = "endpoints.gw.default_headers.Authorization"
    assert lines[0].startswith(f"mirai: {mine}: line 5: {where}: API keys must not")
    assert "dXNlcjpwYXNzd29yZA" not in result.stderr


# --- README recipes -----------------------------------------------------------------------------


def readme_recipes() -> dict[str, str]:
    """``# recipe: NAME`` YAML blocks of the README, by name."""
    text = README.read_text(encoding="utf-8")
    found = re.findall(r"```yaml\n# recipe: (\S+)\n(.*?)```", text, flags=re.DOTALL)
    return dict(found)


# name → (server settings, the provider URL in the recipe → the server's, key variable, profile)
RECIPES = {
    "openai": ({"expected_key": KEY}, "https://api.openai.com/v1", "url", "OPENAI_API_KEY", "main"),
    "azure-v1": (
        {"azure_api_version": AZURE_VERSION, "expected_key": AZURE_KEY},
        "https://my-resource.openai.azure.com",
        "base_url",
        "AZURE_OPENAI_API_KEY",
        "heavy",
    ),
    "azure-classic": (
        {"azure_api_version": AZURE_VERSION, "expected_key": AZURE_KEY},
        "https://my-resource.openai.azure.com",
        "base_url",
        "AZURE_OPENAI_API_KEY",
        "heavy",
    ),
    "ollama": ({"expected_key": "EMPTY"}, "http://localhost:11434/v1", "url", None, "main"),
    "vllm": ({"expected_key": "EMPTY"}, "http://localhost:8000/v1", "url", None, "local-qwen"),
    "litellm": (
        {"expected_key": "sk-test-litellm-virtual-0123456789"},
        "http://localhost:4000/v1",
        "url",
        "LITELLM_API_KEY",
        "claude",
    ),
}
# what the provider's server must have seen: (path, query, auth, extra header or None)
SEEN = {
    "openai": ("/v1/chat/completions", "", "bearer", ("openai-organization", "org-your-org-id")),
    "azure-v1": ("/openai/v1/chat/completions", "", "bearer", None),
    "azure-classic": (
        "/openai/deployments/gpt-4o-prod/chat/completions",
        f"api-version={AZURE_VERSION}",
        "api-key",
        None,
    ),
    "ollama": ("/v1/chat/completions", "", "bearer", None),
    "vllm": ("/v1/chat/completions", "", "bearer", None),
    "litellm": ("/v1/chat/completions", "", "bearer", ("x-litellm-tags", "notebooks")),
}


def test_the_readme_has_each_recipe():
    assert sorted(readme_recipes()) == sorted(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_readme_recipe_makes_a_call_to_a_server_shaped_like_its_provider(
    name, monkeypatch, clock, sleeps
):
    settings, provider_url, which, key_var, profile = RECIPES[name]
    for var in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "LITELLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with OfflineServer(**settings).start() as srv:
        if key_var is not None:
            monkeypatch.setenv(key_var, settings["expected_key"])
        recipe = readme_recipes()[name]
        assert provider_url in recipe
        text = (
            recipe.replace(provider_url, getattr(srv, which)) + "context: {rag: {enabled: false}}\n"
        )
        with Session(parse_config(text, f"{name}.yaml"), clock=clock, sleep=sleeps) as session:
            reply = session.chat(HELLO, profile)
        (request,) = seen(srv)
    path, query, auth, header = SEEN[name]
    assert (request["path"], request["query"], request["auth"], request["status"]) == (
        path,
        query,
        auth,
        200,
    )
    if header is not None:
        assert request["headers"][header[0]] == header[1]
    assert request["model"] == reply.record.model


def test_the_ollama_recipe_has_exactly_its_own_profiles():
    text = readme_recipes()["ollama"]
    config = parse_config(text, "ollama.yaml")
    assert list(config.models) == ["main", "fast", "embed"]
    assert {p.endpoint for p in config.models.values()} == {"ollama"}
    assert config.models["embed"].dimensions is None and config.models["embed"].kind == "embedding"


# --- in a real kernel ---------------------------------------------------------------------------


@pytest.mark.kernel
def test_in_a_kernel_models_and_a_cross_endpoint_fallback(tmp_path, openai_server, local_server):
    from kernelutil import Kernel, kernel_env

    config = tmp_path / "mirai.yaml"
    config.write_text(
        f"endpoint: {{base_url: '{openai_server.url}'}}\n"
        f"endpoints: {{local: {{base_url: '{local_server.url}', api_key_env_var: null}}}}\n"
        "models: {local-llama: {name: llama3.2, endpoint: local, max_tokens: 300}}\n"
        "degradation: {fallback_chain: [heavy, main, local-llama]}\n"
        "defaults: {max_retries: 2, backoff: {base_ms: 10, max_ms: 20}}\n"
        "context: {rag: {enabled: false}}\n"
    )
    env = kernel_env(
        OPENAI_API_KEY=KEY, MIRAI_CONFIG=str(config), MIRAI_HOME=str(tmp_path / ".mirai")
    )
    with Kernel(tmp_path, env) as k:
        k.run("%load_ext mirai_magics")
        listing = k.run("%mirai models").text
        assert f"local · {local_server.url} · no key (EMPTY) — 2 models" in listing
        assert "* llama3.2" in listing and "local-llama" in listing
        openai_server.set_faults(down=True)
        badge = k.run("%%mirai heavy\nAre you there?").text
        assert "local-llama/llama3.2@local" in badge and "heavy→local-llama (connection)" in badge
        assert (
            k.run("print(_mirai.record.endpoint, _mirai.record.model)").text == "local llama3.2\n"
        )
        refused = k.run("%mirai models lcoal", allow_error=True).text
        assert "unknown endpoint 'lcoal'" in refused and "use one of: default, local" in refused
    assert [r["model"] for r in seen(openai_server)] == ["gpt-4o", "gpt-4o"]
    assert [r["model"] for r in seen(local_server)] == ["llama3.2"]
