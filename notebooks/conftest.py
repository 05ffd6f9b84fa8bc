"""nbval runs these notebooks offline: no real key, no streaming (nbval ignores display updates)."""

import os
import tempfile

LIVE_SETTINGS = (
    "OPENAI_API_KEY",
    "MIRAI_BASE_URL",
    "OPENAI_BASE_URL",
    "MIRAI_CONFIG",
    "MIRAI_REPLAY",
    "MIRAI_RECORD",
)
for name in LIVE_SETTINGS:
    os.environ.pop(name, None)
os.environ["MIRAI_STREAM"] = "0"
os.environ["MIRAI_HOME"] = tempfile.mkdtemp(prefix="mirai-nbval-")  # no memory left from a past run
os.environ["MIRAI_USER"] = "notebook"  # `%mirai status` names the user; keep it stable
os.environ["MIRAI_METRICS_PORT"] = "0"  # a free port (9090 may be taken); the sanitizer hides it
os.environ["MIRAI_INDEX_WAIT_S"] = "60"  # stored "memory: N cells" badges: not the machine's speed


def pytest_runtest_setup(item):
    """Each notebook is a notebook of its own for mirai (memory scope, cost totals), as in
    JupyterLab where JPY_SESSION_NAME names it: its kernel starts with MIRAI_NOTEBOOK set to
    the file's name, so notebooks sharing this MIRAI_HOME do not see each other's calls."""
    if str(item.fspath).endswith(".ipynb"):
        os.environ["MIRAI_NOTEBOOK"] = os.path.basename(str(item.fspath))
