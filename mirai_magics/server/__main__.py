"""``python -m mirai_magics.server``: run the offline server until Ctrl-C."""

from __future__ import annotations

import sys

from .cli import add_arguments, main, run_from_args

__all__ = ["add_arguments", "main", "run_from_args"]

if __name__ == "__main__":
    sys.exit(main())
