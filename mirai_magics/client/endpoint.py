"""Where calls go and as whom: the configured base URL and key, or the offline server.

With no base URL configured and no API key in the environment, calls go to the bundled
OpenAI-compatible server on 127.0.0.1, started on first use and kept across reloads.

The key is read from ``security.api_key_env_var`` when the SDK client is built and again
after a 401 (``rotate``): a key rotated in the environment is picked up without a restart.
``keys`` (``KeyAges``) remembers when each key was first used, by a short hash.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Callable
from typing import Any

from ..config import Config, home_dir
from .keys import KEY_FILE, KeyAges

OFFLINE_KEY = "offline-no-key-needed"


class Endpoint:
    """One config's endpoint; ``previous`` hands over an offline server already running
    and the keys already flagged on a badge; ``now`` is the wall clock of key ages."""

    def __init__(
        self,
        config: Config,
        previous: Endpoint | None = None,
        *,
        now: Callable[[], float] = time.time,
    ):
        self.config = config
        self._server: Any = previous._server if previous is not None else None
        flagged = previous.keys.flagged if previous is not None else None
        self.keys = KeyAges(home_dir(config) / KEY_FILE, config.security, now=now, flagged=flagged)

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.config.security.api_key_env_var) or None

    @property
    def offline(self) -> bool:
        """True when calls go to the bundled offline server."""
        return self.config.endpoint.base_url is None and self.api_key is None

    @property
    def base_url(self) -> str | None:
        return self.server.url if self.offline else self.config.endpoint.base_url

    @property
    def server(self) -> Any:
        """The in-process offline server, started on first use."""
        if self._server is None:
            from ..server import OfflineServer

            seed = self.config.testing.offline_server.seed
            self._server = OfflineServer(port=0, seed=seed).start()
        return self._server

    def sdk(self) -> Any:
        """A fresh AsyncOpenAI for this endpoint (the SDK never retries: we do)."""
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        url = self.base_url
        extra: dict[str, Any] = {}
        if url is not None and url.startswith("http://"):  # plain HTTP: no trust store to load
            extra["http_client"] = DefaultAsyncHttpxClient(verify=False)
        key = self.api_key
        self.keys.note(key)
        return AsyncOpenAI(
            api_key=key or OFFLINE_KEY,
            base_url=url,
            organization=self.config.endpoint.organization,
            max_retries=0,
            **extra,
        )

    def rotate(self, sdk: Any) -> bool:
        """After a 401: give ``sdk`` the environment's key if it changed; True when it did."""
        key = self.api_key
        if key is None or key == sdk.api_key:
            return False
        sdk.api_key = key  # read per request by the SDK: the next attempt sends it
        self.keys.note(key)
        return True

    def status_rows(self) -> list[tuple[str, str]]:
        """`%mirai status` rows about the key: its age, or that it is not set."""
        return self._keys_in_use().status_rows()

    def badge_flags(self) -> list[str]:
        """Badge flags of the endpoint: a stale key's age, once per key and session."""
        return self._keys_in_use().badge_flags()

    def _keys_in_use(self) -> KeyAges:
        if self.keys.current is None:  # no SDK client yet: the key its first call will send
            self.keys.note(self.api_key)
        return self.keys

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()


def session_user(config: Config) -> str:
    """Whose per-user budget a call spends: ``limits.user``, ``MIRAI_USER``, the OS user."""
    if config.limits.user or os.environ.get("MIRAI_USER"):
        return config.limits.user or os.environ["MIRAI_USER"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
