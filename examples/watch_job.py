"""Have one ONTAP job watched and wait for its end, with the client API of ontap-job-poller.

    python examples/watch_job.py 1cd8a442-86d1-11e0-ae1c-123478563412 --cluster cluster1

Prints each event of the job as it arrives, then the final one, and exits 0 when the job succeeded,
1 when it failed (or was cancelled, or expired), 2 when the watch ended otherwise (not found,
timeout, error). A worker (``ontap-job-poller run``) must be running against the same broker.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from poller.client import Event, connect, exit_code, wait_for_final
from poller.errors import NotRouted


def describe(event: Event) -> str:
    """One line per event: its routing key and the job's message (or ONTAP's error message)."""
    error = event.data.get("error")
    message = error.get("message") if isinstance(error, dict) else event.data.get("message")
    return f"{event.key}: {message or ''}".rstrip(": ")


async def watch_job(
    amqp_url: str,
    job_uuid: str,
    *,
    cluster: str | None = None,
    queue: str = "ontap.jobs.watch",
    deadline_s: float = 3600.0,
) -> Event:
    """Ask the poller to watch ``job_uuid`` and return the watch's final event.

    ``deadline_s`` is sent with the request: past it, the worker ends the watch with a
    ``watch.<cluster>.timeout`` event. The local ``asyncio.timeout`` adds a minute on top, so that
    this coroutine returns even if no worker is left to send that event.
    """
    connection = await connect(amqp_url, name="watch_job example")
    async with connection, asyncio.timeout(deadline_s + 60):
        return await wait_for_final(
            connection,
            job_uuid,
            cluster=cluster,
            timeout=deadline_s,
            queue=queue,
            on_event=lambda event: print(describe(event), flush=True),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("uuid", help="the ONTAP job UUID")
    parser.add_argument("--cluster", help="configured cluster name (optional with one cluster)")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@localhost:5672/")
    parser.add_argument("--queue", default="ontap.jobs.watch", help="the worker's watch_queue")
    parser.add_argument("--deadline", type=float, default=3600.0, metavar="S")
    args = parser.parse_args(argv)
    try:
        final = asyncio.run(
            watch_job(
                args.amqp_url,
                args.uuid,
                cluster=args.cluster,
                queue=args.queue,
                deadline_s=args.deadline,
            )
        )
    except NotRouted:
        print("no worker has declared the watch queue yet: start `ontap-job-poller run`")
        return 3
    print(f"final: {final.key} (ce-id {final.headers.get('ce-id')})")
    return exit_code(final)


if __name__ == "__main__":
    sys.exit(main())
