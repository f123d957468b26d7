"""``python -m tests.faults.verbose_worker run --config FILE``: the worker, every logger at DEBUG.

The secrets test runs the worker this way so that httpx, httpcore, aio-pika and aiormq say all
they would ever say; the worker itself is ``poller.cli.main`` unchanged.
"""

from __future__ import annotations

import logging
import sys

from poller import cli, ops


def _debug_logging(
    log_format: str = "auto", level: int = logging.INFO, *, for_good: bool = False
) -> None:
    del level  # whatever the command asks for, everything is logged here
    ops.configure_logging(log_format, level=logging.DEBUG, for_good=for_good)
    logging.getLogger().setLevel(logging.DEBUG)


if __name__ == "__main__":
    cli.configure_logging = _debug_logging  # type: ignore[assignment]
    sys.exit(cli.main())
