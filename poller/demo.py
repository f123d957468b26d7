"""``ontap-job-poller demo``: the simulator and a worker in one process, three jobs, their events.

It needs only a broker. Its queues have names of their own, deleted at the end, so that it never
takes work from (or gives work to) a real worker on the same broker. When the broker is this
machine and nothing listens there, it starts a private RabbitMQ node for its own run
(``poller.embedded_broker``).
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import uuid as uuidlib
from typing import Any, TextIO

from poller.amqp import connect, delete_queues, queue_exists
from poller.client import Event, exit_code, wait_for_final
from poller.config import ClusterSettings, Settings
from poller.embedded_broker import EmbeddedBrokerError, private_broker
from poller.runner import run_worker
from poller.simulator import Simulator, running_simulator

CLUSTER = "demo"
_USER, _PASSWORD = "admin", secrets.token_urlsafe(12)

#: (label, timeline): one job succeeds, one fails; a third UUID is unknown to the cluster.
TIMELINES: list[tuple[str, list[dict[str, Any]] | None]] = [
    (
        "volume create (succeeds)",
        [
            {"after": 0, "state": "queued", "message": "Queued"},
            {"after": 1, "state": "running", "message": "Creating volume vol_demo"},
            {"after": 3, "state": "success", "message": "Complete: Successful"},
        ],
    ),
    (
        "snapmirror update (fails)",
        [
            {"after": 0, "state": "running", "message": "Transferring"},
            {
                "after": 2,
                "state": "failure",
                "message": "Destination volume is full",
                "code": 13303812,
            },
        ],
    ),
    ("unknown job", None),
]


def _line(label: str, event: Event) -> str:
    message = event.data.get("message") or event.data.get("error", {}).get("message", "")
    return f"{event.key:<28} {label:<26} ce-id={event.headers.get('ce-id')} message={message!r}"


def main(settings: Settings, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The ``demo`` command: a private broker when none runs here, then the demo itself.

    Without ``rabbitmq-server`` (or when its node cannot start) one line on ``err``, and 1.
    """
    try:
        with private_broker(settings.amqp_url, out):
            return asyncio.run(run_demo(settings, out))
    except EmbeddedBrokerError as exc:
        print(f"ontap-job-poller: demo: {exc}", file=err)
        return 1


async def run_demo(settings: Settings, out: TextIO = sys.stdout) -> int:
    """Run the demo; 0 when every job reached the expected final event."""
    sim = Simulator(username=_USER, password=_PASSWORD)
    token = secrets.token_hex(4)
    demo_settings = settings.model_copy(
        update={
            "watch_queue": f"{settings.watch_queue}.demo-{token}",
            "dead_letter_queue": f"{settings.dead_letter_queue}.demo-{token}",
            "poll_interval_min": 0.5,
            "poll_interval_max": 2.0,
        }
    )
    async with running_simulator(sim) as base_url:
        cluster = ClusterSettings(url=base_url, username=_USER, password=_PASSWORD)
        demo_settings = demo_settings.model_copy(update={"clusters": {CLUSTER: cluster}})
        jobs = [
            (label, sim.create_job(description=label, timeline=tl) if tl else str(uuidlib.uuid4()))
            for label, tl in TIMELINES
        ]
        print(f"simulated cluster {CLUSTER!r} at {base_url}; watching {len(jobs)} jobs", file=out)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(demo_settings, stop))
        connection = await connect(settings, name="ontap-job-poller demo")
        try:
            await _wait_declared(connection, demo_settings.watch_queue, worker)
            finals = await asyncio.gather(
                *(_watch(connection, demo_settings, label, uuid, out) for label, uuid in jobs)
            )
        finally:
            stop.set()
            try:
                await worker
            finally:
                await delete_queues(
                    connection, [demo_settings.watch_queue, demo_settings.dead_letter_queue]
                )
                await connection.close()
    outcomes = [final.outcome for final in finals]
    print(f"done: {', '.join(outcomes)}", file=out)
    return 0 if outcomes == ["success", "failure", "not_found"] else 1


async def _watch(connection: Any, settings: Settings, label: str, uuid: str, out: TextIO) -> Event:
    final = await wait_for_final(
        connection,
        uuid,
        cluster=CLUSTER,
        timeout=60,
        queue=settings.watch_queue,
        on_event=lambda event: print(_line(label, event), file=out, flush=True),
    )
    print(f"{label}: final {final.outcome} (exit code {exit_code(final)})", file=out, flush=True)
    return final


async def _wait_declared(connection: Any, queue: str, worker: asyncio.Task[None]) -> None:
    for _ in range(200):
        if worker.done():
            await worker  # surfaces the worker's start-up error
        if await queue_exists(connection, queue):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the demo worker did not declare its queue within 10 s")
