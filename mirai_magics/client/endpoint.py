"""Where calls go and as whom: the default endpoint, each of ``endpoints:``, the offline server.

The default endpoint (``endpoint:``, its key from ``security.api_key_env_var``) serves every
profile without ``endpoint:``; with no base URL configured and no API key in the
environment, it is the bundled OpenAI-compatible server on 127.0.0.1, started on first use
and kept across reloads. A named endpoint (``endpoints.NAME``, for profiles that say
``endpoint: NAME``) has its own base URL, key variable, organization, headers and query;
with no key variable (a local server) ``EMPTY`` is sent. With ``api_version`` it is Azure's
classic deployments form: the SDK's AsyncAzureOpenAI sends ``/openai/deployments/{model}/…
?api-version=…`` with an ``api-key`` header; Azure's ``/openai/v1/`` form is a plain base URL.

Each endpoint's key is read when its SDK client is built and again after a 401 (``rotate``):
a key rotated in the environment is picked up without a restart. ``keys`` (``KeyAges``)
remembers when each key was first used, by a short hash.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..config import Config, NamedEndpoint, home_dir
from ..errors import ConfigError
from ..schema import DEFAULT_ENDPOINT
from .keys import KEY_FILE, KeyAges

OFFLINE_KEY = "offline-no-key-needed"
NO_KEY = "EMPTY"  # what a named endpoint without a key variable sends (vLLM's convention)
AZURE_SUFFIX = "/openai"  # AsyncAzureOpenAI adds it to the resource URL itself


class Endpoint:
    """One endpoint of a config (``name``: ``default`` or a key of ``endpoints:``);
    ``previous`` hands over an offline server already running and the keys already flagged
    on a badge; ``now`` is the wall clock of key ages."""

    def __init__(
        self,
        config: Config,
        previous: Endpoint | None = None,
        *,
        name: str = DEFAULT_ENDPOINT,
        now: Callable[[], float] = time.time,
    ):
        self.config, self.name = config, name
        self.settings: NamedEndpoint | None = (
            None if name == DEFAULT_ENDPOINT else config.endpoints[name]
        )
        self._server: Any = previous._server if previous is not None else None
        flagged = previous.keys.flagged if previous is not None else None
        security = config.security
        if self.settings is not None and self.key_var is not None:  # its rows name its variable
            security = security.model_copy(update={"api_key_env_var": self.key_var})
        self.keys = KeyAges(home_dir(config) / KEY_FILE, security, now=now, flagged=flagged)

    @property
    def key_var(self) -> str | None:
        """The environment variable holding this endpoint's key (None: it needs none)."""
        if self.settings is None:
            return self.config.security.api_key_env_var
        return self.settings.api_key_env_var

    @property
    def api_key(self) -> str | None:
        return (os.environ.get(self.key_var) or None) if self.key_var else None

    @property
    def offline(self) -> bool:
        """True when calls go to the bundled offline server (the default endpoint only)."""
        if self.settings is not None:
            return False
        return self.config.endpoint.base_url is None and self.api_key is None

    @property
    def base_url(self) -> str | None:
        if self.settings is not None:
            return self.settings.base_url
        return self.server.url if self.offline else self.config.endpoint.base_url

    @property
    def azure_version(self) -> str | None:
        """The ``api-version`` of Azure's classic form, or None."""
        return self.settings.api_version if self.settings is not None else None

    @property
    def server(self) -> Any:
        """The in-process offline server, started on first use."""
        if self._server is None:
            from ..server import OfflineServer

            seed = self.config.testing.offline_server.seed
            self._server = OfflineServer(port=0, seed=seed).start()
        return self._server

    def sdk(self) -> Any:
        """A fresh AsyncOpenAI (AsyncAzureOpenAI for Azure's classic form) for this endpoint;
        the SDK never retries: we do."""
        from openai import AsyncAzureOpenAI, AsyncOpenAI, DefaultAsyncHttpxClient

        url = self.base_url
        extra: dict[str, Any] = {}
        if url is not None and url.startswith("http://"):  # plain HTTP: no trust store to load
            extra["http_client"] = DefaultAsyncHttpxClient(verify=False)
        key = self._key_to_send()
        self.keys.note(self.api_key)
        settings = self.settings
        if settings is None:
            organization = self.config.endpoint.organization
            return AsyncOpenAI(
                api_key=key, base_url=url, organization=organization, max_retries=0, **extra
            )
        extra["default_headers"] = dict(settings.default_headers) or None
        extra["default_query"] = dict(settings.default_query) or None
        if settings.api_version is not None:
            resource = settings.base_url.rstrip("/").removesuffix(AZURE_SUFFIX)
            return AsyncAzureOpenAI(
                azure_endpoint=resource,
                api_version=settings.api_version,
                api_key=key,
                organization=settings.organization,
                max_retries=0,
                **extra,
            )
        return AsyncOpenAI(
            api_key=key, base_url=url, organization=settings.organization, max_retries=0, **extra
        )

    def _key_to_send(self) -> str:
        """The key; a placeholder for a server that needs none; refused when it is missing."""
        key = self.api_key
        if key is not None:
            return key
        if self.settings is None:
            return OFFLINE_KEY
        if self.key_var is None:
            return NO_KEY
        raise ConfigError(
            f"endpoints.{self.name}: ${self.key_var} is not set, so nothing was sent there",
            hint=f"set it (`%env {self.key_var}=…`) then `%mirai reload`; a server that needs "
            "no key takes api_key_env_var: null",
        )

    def rotate(self, sdk: Any) -> bool:
        """After a 401: give ``sdk`` the environment's key if it changed; True when it did."""
        key = self.api_key
        if key is None or key == sdk.api_key:
            return False
        sdk.api_key = key  # read per request by the SDK: the next attempt sends it
        self.keys.note(key)
        return True

    def describe(self) -> str:
        """``http://127.0.0.1:11434/v1 · no key``: where it is, and how calls authenticate."""
        if self.offline:
            return "offline server (no API key and no base URL set)"
        where = self.base_url or "api.openai.com"
        if self.azure_version is not None:
            where += f" · Azure api-version {self.azure_version}"
        if self.key_var is None:
            return f"{where} · no key ({NO_KEY})"
        return f"{where} · key ${self.key_var}" + ("" if self.api_key else " (not set)")

    def status_rows(self) -> list[tuple[str, str]]:
        """`%mirai status` rows about the key (and, for a named endpoint, where it is)."""
        if self.settings is None:
            return self._keys_in_use().status_rows()
        rows = [(f"endpoint {self.name}", self.describe())]
        if self.key_var is not None:
            keys = self._keys_in_use().status_rows()
            rows += [(f"{label} ({self.name})", value) for label, value in keys]
        return rows

    def badge_flags(self) -> list[str]:
        """Badge flags of the endpoint: a stale key's age, once per key and session."""
        return self._keys_in_use().badge_flags() if self.key_var else []

    def _keys_in_use(self) -> KeyAges:
        if self.keys.current is None:  # no SDK client yet: the key its first call will send
            self.keys.note(self.api_key)
        return self.keys

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()


class Endpoints:
    """Every endpoint of a config by name: ``default`` (the ``endpoint:`` block) first, then
    each of ``endpoints:``; ``previous`` (the set before a reload) hands over their state."""

    def __init__(
        self,
        config: Config,
        previous: Endpoints | None = None,
        *,
        now: Callable[[], float] = time.time,
    ):
        old = previous.by_name if previous is not None else {}
        names = [DEFAULT_ENDPOINT, *config.endpoints]
        self.by_name = {name: Endpoint(config, old.get(name), name=name, now=now) for name in names}
        for name in set(old) - set(names):  # dropped by the reload
            old[name].close()

    @property
    def default(self) -> Endpoint:
        return self.by_name[DEFAULT_ENDPOINT]

    def get(self, name: str | None) -> Endpoint:
        """The endpoint called ``name`` (None: the default one)."""
        return self.by_name[name or DEFAULT_ENDPOINT]

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self.by_name.values())

    def status_rows(self) -> list[tuple[str, str]]:
        return [row for endpoint in self for row in endpoint.status_rows()]

    def close(self) -> None:
        for endpoint in self:
            endpoint.close()


class SdkClients:
    """Each endpoint's SDK client, the named ones built on first use (on the engine loop's
    thread): ``sdk`` and ``rekey`` are the default endpoint's, ``endpoints`` builds the others
    (None: an ``Endpoints`` of ``config``, made when one is first needed)."""

    def __init__(
        self,
        config: Config,
        sdk: Any,
        rekey: Callable[[Any], bool] | None = None,
        endpoints: Endpoints | None = None,
    ):
        self.config, self.default, self._rekey = config, sdk, rekey
        self._endpoints = endpoints
        self.named: dict[str, Any] = {}

    def get(self, name: str | None) -> Any:
        """The client of endpoint ``name`` (None: the default one)."""
        if name is None:
            return self.default
        if name not in self.named:
            self.named[name] = self.endpoint(name).sdk()
        return self.named[name]

    def endpoint(self, name: str) -> Endpoint:
        if self._endpoints is None:
            self._endpoints = Endpoints(self.config)
        return self._endpoints.get(name)

    def rekey(self, name: str | None) -> bool:
        """After a 401: give ``name``'s client the key now in the environment; True when it
        changed (the request is worth sending again)."""
        if name is None:
            return self._rekey is not None and self._rekey(self.default)
        return self.endpoint(name).rotate(self.get(name))

    async def aclose(self) -> None:
        clients, self.named = [self.default, *self.named.values()], {}
        for client in clients:
            await client.close()


def import_resources(sdk: Any) -> None:
    """Touch what the SDK imports lazily on first use (chat completions, embeddings): done
    at warm-up or before a rate slot is booked, not between the slot and the send."""
    _ = sdk.chat.completions, sdk.embeddings


def session_user(config: Config) -> str:
    """Whose per-user budget a call spends: ``limits.user``, ``MIRAI_USER``, the OS user."""
    if config.limits.user or os.environ.get("MIRAI_USER"):
        return config.limits.user or os.environ["MIRAI_USER"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
