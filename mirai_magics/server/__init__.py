"""OpenAI-compatible offline HTTP server with fault injection (offline demo, tests, load tests).

    from mirai_magics.server import OfflineServer, Faults
    with OfflineServer(faults=Faults(fail_429=0.1)).start() as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="sk-offline")

Answers are deterministic and say they come from the offline server; it is never a model.
"""

from .cli import add_arguments, run_from_args, server_from_args
from .faults import Faults
from .runner import OfflineServer

__all__ = ["Faults", "OfflineServer", "add_arguments", "run_from_args", "server_from_args"]
