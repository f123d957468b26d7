"""Event-Driven Ansible against the real broker and a worker: the source in process, then the
example rulebook run by a real ansible-rulebook."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest

from poller.eda import SOURCE_DIR
from poller.eda.ontap_job_events import main
from poller.events import Envelope, job_event
from poller.models import Job
from poller.tracking import Change
from tests.faults.tcp_proxy import TcpProxy
from tests.integration.conftest import cluster, make_settings

pytestmark = pytest.mark.integration


class GatedQueue:
    """A rulebook queue that takes each event only when the test opens the gate."""

    def __init__(self) -> None:
        self.offered: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.gate = asyncio.Event()

    async def put(self, item: dict[str, Any]) -> None:
        await self.offered.put(item)
        await self.gate.wait()


@pytest.fixture
async def durable_queue(amqp_url: str) -> AsyncIterator[str]:
    """The name of a durable queue for the source, deleted afterwards."""
    name = f"test.{secrets.token_hex(4)}.eda"
    yield name
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)


async def ready_count(amqp_url: str, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of ``queue``; (-1, 0) while it does not exist."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return -1, 0
        result = declared.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)


async def until(check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            if result := await check():
                return result
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def source(queue: Any, args: dict[str, Any], amqp_url: str) -> AsyncIterator[None]:
    """The source running until the block ends, as ansible-rulebook runs it (cancelled at the end)."""
    task = asyncio.create_task(main(queue, args))
    try:
        await until(lambda: _consuming(amqp_url, args["queue"], task))
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _consuming(amqp_url: str, queue: str, task: asyncio.Task[None]) -> bool:
    if task.done():
        await task  # its error, if it failed
    return (await ready_count(amqp_url, queue))[1] > 0


async def test_worker_events_reach_the_rulebook_queue_by_binding(
    sim, names, amqp_url, start_worker, publish, durable_queue
) -> None:
    """A failed and an unknown job arrive with job.code and error.code; unbound keys stay out."""
    simulator, base_url = sim
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    args = {
        "amqp_url": amqp_url,
        "exchange": names.events_exchange,
        "bindings": ["job.*.failure", "watch.#"],
        "queue": durable_queue,
    }
    async with source(events, args, amqp_url):
        failed = simulator.create_job(
            timeline=[
                {"after": 0, "state": "running", "message": "Transferring"},
                {"after": 0.5, "state": "failure", "message": "Volume full", "code": 13303812},
            ]
        )
        unknown = str(uuid.uuid4())
        for job in (failed, unknown):
            await publish(names.watch_queue, {"uuid": job, "cluster": "c1"})
        got = [await asyncio.wait_for(events.get(), 20) for _ in range(2)]

    by_subject = {event["subject"]: event for event in got}
    failure, not_found = by_subject[failed], by_subject[unknown]
    assert failure["routing_key"] == "job.c1.failure"
    assert failure["type"] == "ontap.job.failure"
    assert failure["previous_state"] == "running"
    assert failure["job"]["code"] == 13303812
    assert failure["job"]["state"] == "failure"
    assert "error" not in failure
    assert not_found["routing_key"] == "watch.c1.not_found"
    assert not_found["error"]["code"] == "4"
    assert not_found["cluster"] == "c1"
    assert "job" not in not_found
    assert events.empty()  # job.c1.running was not bound


async def test_a_message_is_acked_only_once_its_event_is_on_the_rulebook_queue(
    names, amqp_url, durable_queue
) -> None:
    """Stopped while put() waits, the message stays in the queue; once put() returned, it is gone."""
    args = {"amqp_url": amqp_url, "exchange": names.events_exchange, "queue": durable_queue}
    envelope = publishable(str(uuid.uuid4()))

    gated = GatedQueue()
    async with source(gated, args, amqp_url):
        await publish_event(amqp_url, names.events_exchange, envelope)
        offered = await asyncio.wait_for(gated.offered.get(), 10)
    assert offered["id"] == envelope.message_id
    assert await until(lambda: _ready(amqp_url, durable_queue, 1))  # not acknowledged: back

    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    async with source(events, args, amqp_url):
        again = await asyncio.wait_for(events.get(), 10)
    assert again["id"] == envelope.message_id
    assert await ready_count(amqp_url, durable_queue) == (0, 0)  # acknowledged: gone


async def _ready(amqp_url: str, queue: str, count: int) -> bool:
    return (await ready_count(amqp_url, queue))[0] == count


def publishable(job_uuid: str) -> Envelope:
    job = Job.from_ontap({"uuid": job_uuid, "state": "success"})
    return job_event("c1", job.uuid, Change("state", job, "success", None, 0), datetime.now(UTC))


async def publish_event(amqp_url: str, exchange_name: str, envelope: Envelope) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(exchange_name)
        await exchange.publish(
            aio_pika.Message(envelope.body, headers=dict(envelope.headers)), envelope.routing_key
        )


@pytest.mark.timeout(60)
async def test_a_dropped_connection_redelivers_the_event_and_the_source_goes_on(
    names, amqp_url, durable_queue
) -> None:
    """Cut while put() waits: the ack is lost, not the source; the event comes again, same id."""
    upstream = urlsplit(amqp_url)
    proxy = await TcpProxy(upstream.port or 5672, upstream.hostname or "127.0.0.1").start()
    through_proxy = amqp_url.replace(upstream.netloc.split("@")[-1], f"127.0.0.1:{proxy.port}")
    args = {"amqp_url": through_proxy, "exchange": names.events_exchange, "queue": durable_queue}
    envelope = publishable(str(uuid.uuid4()))
    gated = GatedQueue()
    try:
        async with source(gated, args, amqp_url):
            await publish_event(amqp_url, names.events_exchange, envelope)
            first = await asyncio.wait_for(gated.offered.get(), 10)
            proxy.cut()
            await asyncio.sleep(0.5)  # the source has seen its connection go
            gated.gate.set()  # put() returns; its ack cannot be sent
            await asyncio.sleep(0.2)
            proxy.restore()
            again = await asyncio.wait_for(gated.offered.get(), 30)  # after the reconnect
            await until(lambda: _ready_and_consumed(amqp_url, durable_queue))
    finally:
        await proxy.close()
    assert first["id"] == again["id"] == envelope.message_id
    assert await ready_count(amqp_url, durable_queue) == (0, 0)


async def _ready_and_consumed(amqp_url: str, queue: str) -> bool:
    return await ready_count(amqp_url, queue) == (0, 1)


ROOT = Path(__file__).resolve().parents[2]
RULEBOOK = ROOT / "examples" / "ontap_job_events.yml"
JDK_HINT = (
    "a JDK 17 or later (Debian: apt-get install openjdk-17-jre-headless), or JAVA_HOME set to one"
)


def ansible_rulebook() -> str:
    """The ansible-rulebook beside this Python, or on PATH; the test fails naming what to install."""
    beside = Path(sys.executable).parent / "ansible-rulebook"
    found = str(beside) if beside.exists() else shutil.which("ansible-rulebook")
    if found is None:
        pytest.fail(
            "ansible-rulebook is not installed: pip install -e '.[test]' brings it "
            "(packages ansible-rulebook and ansible-core, the [eda] extra)",
            pytrace=False,
        )
    return found


def java_major(home: Path) -> int | None:
    """The major version of the JDK at ``home``; None when it is no JDK with a JVM library."""
    java = home / "bin" / "java"
    if not java.is_file() or not any(home.glob("lib/server/libjvm.*")):
        return None
    shown = subprocess.run(
        [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
    )
    found = re.search(r'version "(\d+)', shown.stderr)
    return int(found[1]) if found else None


def java_home() -> str:
    """A JDK 17 or later for ansible-rulebook's rule engine: JAVA_HOME, java on PATH, /usr/lib/jvm."""
    candidates = [Path(os.environ["JAVA_HOME"])] if os.environ.get("JAVA_HOME") else []
    if (java := shutil.which("java")) is not None:
        candidates.append(Path(java).resolve().parents[1])
    candidates += sorted(Path("/usr/lib/jvm").glob("*"))
    for home in candidates:
        major = java_major(home)
        if major is not None and major >= 17:
            return str(home)
    pytest.fail(f"ansible-rulebook needs {JDK_HINT}; none was found", pytrace=False)


@contextlib.asynccontextmanager
async def rulebook_process(tmp_path: Path, variables: dict[str, str]) -> AsyncIterator[list[str]]:
    """examples/ontap_job_events.yml under ansible-rulebook; yields its output lines as they come."""
    executable, jdk = ansible_rulebook(), java_home()
    (tmp_path / "vars.yml").write_text(json.dumps(variables))
    (tmp_path / "inventory.yml").write_text(
        json.dumps({"all": {"hosts": {"localhost": {"ansible_connection": "local"}}}})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.update(
        JAVA_HOME=jdk,
        # ansible-rulebook asks ansible-galaxy (installed beside it) about collections.
        PATH=f"{Path(executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        ANSIBLE_HOME=str(tmp_path / "ansible"),
    )
    process = await asyncio.create_subprocess_exec(
        executable,
        "--rulebook",
        str(RULEBOOK),
        "-S",
        str(SOURCE_DIR),
        "-i",
        str(tmp_path / "inventory.yml"),
        "--vars",
        str(tmp_path / "vars.yml"),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            lines.append(raw.decode(errors="replace").rstrip("\n"))

    reader = asyncio.create_task(read())
    try:
        yield lines
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        await asyncio.wait_for(reader, 10)


@pytest.mark.timeout(90)
async def test_ansible_rulebook_fires_the_example_rules_with_the_documented_fields(
    tmp_path, sim, names, amqp_url, start_worker, publish, durable_queue
) -> None:
    """The example rulebook, run by ansible-rulebook with -S poller/eda: failed, succeeded, unknown."""
    simulator, base_url = sim
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    variables = {
        "ontap_amqp_url": amqp_url,
        "ontap_events_exchange": names.events_exchange,
        "ontap_events_queue": durable_queue,
    }
    async with rulebook_process(tmp_path, variables) as output:

        async def consuming() -> bool:
            if "Terminating" in "\n".join(output):
                raise AssertionError("ansible-rulebook stopped:\n" + "\n".join(output[-30:]))
            return (await ready_count(amqp_url, durable_queue))[1] > 0

        try:
            await until(consuming, 60)
        except TimeoutError:
            raise AssertionError("no consumer after 60 s:\n" + "\n".join(output[-30:])) from None
        ok = simulator.create_job(
            timeline=[
                {"after": 0, "state": "running", "message": "Creating volume"},
                {"after": 1, "state": "success", "message": "Complete: Successful"},
            ]
        )
        bad = simulator.create_job(
            timeline=[
                {"after": 0, "state": "running", "message": "Transferring"},
                {
                    "after": 1,
                    "state": "failure",
                    "message": "Destination volume is full",
                    "code": 13303812,
                },
            ]
        )
        unknown = str(uuid.uuid4())
        for job in (ok, bad, unknown):
            await publish(names.watch_queue, {"uuid": job, "cluster": "c1"})
        expected = [
            f"job {bad} failed on cluster c1 (code 13303812, was running): Destination volume is full",
            f"job {ok} succeeded on cluster c1 (was running): Complete: Successful",
            f"job {unknown} is unknown to cluster c1 (error 4): entry doesn't exist",
        ]

        async def fired() -> bool:
            return all(line in output for line in expected)

        try:
            await until(fired, 30)
        except TimeoutError:
            missing = [line for line in expected if line not in output]
            raise AssertionError(
                f"rules not fired: {missing}\n" + "\n".join(output[-40:])
            ) from None
