"""`mirai worker`: an Arq worker running queued items through its own resilient client.

The client is built on the worker's loop the way the kernel builds it (``Endpoint`` from
the config and the environment: MIRAI_BASE_URL, OPENAI_API_KEY, else the offline server;
the quota ``Policy``; canaries), without the notebook's parts: no history, memory, call log
or metrics server. Which Redis and queue: ``redis.url`` (MIRAI_REDIS_URL wins), ``queue.name``.

Take-over of a dead worker's item: Arq marks a picked job with ``arq:in-progress:<id>``
(``SET PX``, once, never refreshed) and leaves it in the queue until it finishes; when that
key expires, the next worker to poll runs it again (``try=2``). Arq sets the expiry to the
job timeout + 10 s (300 s + 10 by default); here it is ``queue.job_timeout_s`` itself and
an item's run is cut ``margin`` earlier, so a live worker never loses an item it still runs.
(``expires_extra_ms``, a day, is the life of a job not yet started, not of a claim.)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Any

from ..config import Config, job_timeout_s, load_config, redis_url
from ..errors import RedisUnavailableError
from .arq_backend import FUNCTION
from .items import run_item

KEEP_RESULT_S = 86_400  # an uncollected result waits a day for a (restarted) kernel
MAX_TRIES = 3  # the first try and two take-overs; a payload that kills workers ends there
RECONNECT_CAP_S = 2.0  # Redis gone while running: retry every ≤ 2 s until it is back

log = logging.getLogger("mirai.worker")


def timeouts(job_timeout: float) -> tuple[float, float]:
    """(longest run of one item, life of its in-progress claim) for ``queue.job_timeout_s``."""
    margin = min(5.0, job_timeout / 4)  # time to store a timed-out item's result
    return job_timeout - margin, job_timeout


class SayLost:
    """A redis-py backoff (``compute``, ``reset``) that logs, once a minute, that Redis is gone."""

    def __init__(self, backoff: Any, url: str):
        self.backoff, self.url, self.said = backoff, url, -3600.0

    def reset(self) -> None:
        self.backoff.reset()

    def compute(self, failures: int) -> float:
        if failures == 1 and time.monotonic() - self.said > 60:
            from ..client.shared_limits import safe_url

            self.said = time.monotonic()
            log.warning("Redis at %s lost; reconnecting", safe_url(self.url))
        return self.backoff.compute(failures)


async def mirai_item(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """One queued item (an Arq job): its result dict; a failed call is a result too."""
    started = time.monotonic()
    result = await run_item(ctx["client"], payload)
    outcome = result.get("error_code") or "ok"
    spent_ms = (time.monotonic() - started) * 1000
    log.info("%s try %s: %s in %.0f ms", ctx["job_id"], ctx["job_try"], outcome, spent_ms)
    return result


async def build_client(config: Config) -> tuple[Any, Any]:
    """(ResilientClient, Endpoint) for this process, on the running loop."""
    from ..client.canary import Canaries, session_identity
    from ..client.client import ResilientClient
    from ..client.endpoint import Endpoint, session_user
    from ..client.policy import Policy

    endpoint, policy = Endpoint(config), Policy(config)
    canaries = Canaries(config.models, session_identity())
    client = ResilientClient(
        config,
        endpoint.sdk(),
        policy=policy,
        observers=[*policy.observers, canaries],
        user=session_user(config),
        rekey=endpoint.rotate,
        canaries=canaries,
    )
    return client, endpoint


async def _startup(ctx: dict[str, Any]) -> None:
    from ..client.endpoint import import_resources

    ctx["client"], ctx["endpoint"] = await build_client(ctx["config"])
    import_resources(ctx["client"].sdk)  # once here, not in the first item


async def _shutdown(ctx: dict[str, Any]) -> None:
    if "client" in ctx:
        await ctx["client"].aclose()  # every endpoint's SDK client
        await ctx["client"].policy.aclose()
        ctx["endpoint"].close()


def redis_settings(config: Config, *, reconnect: bool) -> Any:
    """Arq's RedisSettings of ``redis.url``; ``reconnect``: wait out an outage, forever."""
    from arq.connections import RedisSettings
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError, TimeoutError

    settings = RedisSettings.from_dsn(redis_url(config))
    settings.conn_timeout = config.redis.connect_timeout_s  # type: ignore[assignment]
    if reconnect:
        backoff = ExponentialBackoff(cap=RECONNECT_CAP_S, base=0.1)
        settings.retry = Retry(SayLost(backoff, redis_url(config)), -1)
        settings.retry_on_error = [ConnectionError, TimeoutError, OSError]
    else:
        settings.conn_retries = 0
    return settings


def with_concurrency(config: Config, n: int) -> Config:
    """``config`` running ``n`` background items at once (the policy caps them too)."""
    caps = config.limits.concurrency
    caps = caps.model_copy(update={"background": n, "chat": max(caps.chat, n)})
    return config.model_copy(
        update={"limits": config.limits.model_copy(update={"concurrency": caps})}
    )


def build_worker(config: Config, *, burst: bool = False) -> Any:
    """The Arq Worker of ``config`` (not started): ``limits.concurrency.background`` at once."""
    from arq import func
    from arq.worker import Worker

    run_s, claim_s = timeouts(job_timeout_s(config))
    worker = Worker(
        functions=[func(mirai_item, name=FUNCTION)],
        queue_name=config.queue.name,
        redis_settings=redis_settings(config, reconnect=True),
        on_startup=_startup,
        on_shutdown=_shutdown,
        burst=burst,
        max_jobs=config.limits.concurrency.background,
        job_timeout=run_s,
        keep_result=KEEP_RESULT_S,
        max_tries=MAX_TRIES,
        allow_abort_jobs=True,  # ArqBackend.cancel aborts running items
        ctx={"config": config},
        log_results=False,  # answers stay out of the worker's log
    )
    if not hasattr(worker, "in_progress_timeout_s"):  # an Arq that renamed it: say so
        raise RuntimeError("arq changed: Worker.in_progress_timeout_s is gone")
    worker.in_progress_timeout_s = claim_s  # Arq's default: run_s + 10
    return worker


async def check_redis(config: Config) -> None:
    """RedisUnavailableError (one line) unless ``redis.url`` answers a PING now."""
    from arq import create_pool
    from redis.exceptions import RedisError

    from ..client.shared_limits import safe_url

    timeout, url = config.redis.connect_timeout_s, safe_url(redis_url(config))
    hint = "start redis-server, or fix redis.url / MIRAI_REDIS_URL"
    try:
        pool = await asyncio.wait_for(
            create_pool(redis_settings(config, reconnect=False)), timeout + 1
        )
    except asyncio.TimeoutError:
        raise RedisUnavailableError(
            url, f"no answer within {timeout:g} s", hint=hint, effect="the worker did not start"
        ) from None
    except (RedisError, OSError) as exc:  # refused, unknown host, wrong password…
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise RedisUnavailableError(
            url, reason, hint=hint, effect="the worker did not start"
        ) from None
    await pool.aclose()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", help="YAML file layered over the defaults")
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    parser.add_argument(
        "--concurrency",
        type=_positive,
        metavar="N",
        help="items at once (default: limits.concurrency.background)",
    )


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    """`mirai worker`: one line on start, then Arq's loop until SIGINT/SIGTERM (or --burst)."""
    from ..client.shared_limits import safe_url

    config = load_config(args.config)
    if args.concurrency is not None:
        config = with_concurrency(config, args.concurrency)
    # warnings of every library; info only ours (Arq's job lines would show the prompts)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # Arq's Worker runs on the current loop
    try:
        loop.run_until_complete(check_redis(config))
    except RedisUnavailableError as exc:
        print(f"mirai worker: {exc}", file=sys.stderr)
        return 2
    worker = build_worker(config, burst=args.burst)
    print(
        f"mirai worker: queue {config.queue.name} on {safe_url(redis_url(config))}, "
        f"concurrency {worker.max_jobs}, job timeout {job_timeout_s(config):g} s",
        flush=True,
    )
    worker.run()
    return 0
