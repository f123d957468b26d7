"""Every Python example of README.md, run as written against a real broker, simulator and worker.

Examples are the fenced ``python`` blocks right after a ``<!-- example: NAME -->`` comment. Each
runs in its own interpreter with only its names changed: the broker URL, the queue and exchange
names (this test's own), the cluster name and the job UUID (a job of the simulator).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
from pathlib import Path

import aio_pika
import pytest

from tests.integration.conftest import Names, cluster, make_settings

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE_UUID = "1cd8a442-86d1-11e0-ae1c-123478563412"
SUCCESS = [
    {"after": 0, "state": "queued", "message": "Queued"},
    {"after": 0.5, "state": "running", "message": "Creating volume"},
    {"after": 1.0, "state": "success", "message": "Complete: Successful"},
]


def examples() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    found = dict(re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```", text, re.DOTALL))
    assert found, "README.md has no '<!-- example: NAME -->' python block"
    return found


def adapt(code: str, amqp_url: str, names: Names, job: str, queue: str = "unused") -> str:
    """The example with this test's names; the README's defaults must all be gone."""
    replacements = {
        '"amqp://guest:guest@localhost:5672/"': json.dumps(amqp_url),
        '"ontap.jobs.watch"': json.dumps(names.watch_queue),
        '"ontap.jobs"': json.dumps(names.events_exchange),
        f'"{EXAMPLE_UUID}"': json.dumps(job),
        '"cluster1"': '"c1"',
        '"my-service.ontap-jobs"': json.dumps(queue),
    }
    for old, new in replacements.items():
        code = code.replace(old, new)
    for default in ("localhost:5672", '"ontap.jobs', EXAMPLE_UUID, '"my-service.'):
        assert default not in code, f"example still uses {default}: the test would touch real names"
    return code


async def run(code: str, timeout_s: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-u",
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def test_the_readme_has_every_documented_example() -> None:
    """Publishers with aio-pika and pika, the client API, and a subscriber."""
    assert set(examples()) == {"publish-aio-pika", "publish-pika", "client-wait", "subscribe"}


@pytest.mark.parametrize("name", ["publish-aio-pika", "publish-pika"])
async def test_publisher_example_gets_a_job_watched(
    name, sim, names, amqp_url, start_worker, subscribe
) -> None:
    """The request the example publishes is taken by the worker: the job's events follow."""
    simulator, base_url = sim
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    events, _ = await subscribe(names.events_exchange, "#")
    job = simulator.create_job(timeline=SUCCESS)

    code, out, err = await run(adapt(examples()[name], amqp_url, names, job))

    assert code == 0, out + err
    await events.wait_keys("job.c1.queued", "job.c1.running", "job.c1.success")
    assert {e.headers["ce-subject"] for e in events.events()} == {job}


@pytest.mark.parametrize("name", ["publish-aio-pika", "publish-pika"])
async def test_publisher_example_fails_loudly_without_a_worker(name, names, amqp_url) -> None:
    """As its comment says, the example fails when no worker has declared the queue yet."""
    code, out, err = await run(adapt(examples()[name], amqp_url, names, EXAMPLE_UUID.upper()))
    assert code != 0, out
    assert "Traceback" in err


async def test_client_example_prints_the_final_event(sim, names, amqp_url, start_worker) -> None:
    """The client API example waits for the job's end and prints its key and the ONTAP job."""
    simulator, base_url = sim
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    job = simulator.create_job(timeline=SUCCESS)

    code, out, err = await run(adapt(examples()["client-wait"], amqp_url, names, job))

    assert code == 0, out + err
    assert out.startswith("job.c1.success {")
    assert f"'uuid': '{job}'" in out


@pytest.mark.timeout(90)
async def test_subscriber_example_sees_jobs_complete(
    sim, names, amqp_url, start_worker, publish
) -> None:
    """The subscriber prints the final events: a success, and a job ONTAP does not know."""
    simulator, base_url = sim
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    queue = f"test.{secrets.token_hex(4)}.subscriber"
    code = adapt(examples()["subscribe"], amqp_url, names, EXAMPLE_UUID, queue)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-u", "-c", code, stdout=asyncio.subprocess.PIPE
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        await wait_for_binding(amqp_url, queue, names)
        known = simulator.create_job(timeline=SUCCESS)
        unknown = "0b0e1e2e-0000-4000-8000-000000000001"
        await publish(names.watch_queue, {"uuid": known, "cluster": "c1"})
        await publish(names.watch_queue, {"uuid": unknown, "cluster": "c1"})
        async with asyncio.timeout(30):
            while not {"job.c1.success", "watch.c1.not_found"} <= {ln.split()[0] for ln in lines}:
                line = await process.stdout.readline()
                assert line, "the subscriber stopped"
                lines.append(line.decode().strip())
    finally:
        process.terminate()
        await process.wait()
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(queue)
    success = next(ln for ln in lines if ln.startswith("job.c1.success"))
    assert success.endswith("Complete: Successful")
    expected = {"job.c1.success", "watch.c1.not_found", "watch.probe.error"}
    assert all(ln.split()[0] in expected for ln in lines)


async def wait_for_binding(amqp_url: str, queue: str, names: Names) -> None:
    """Until the example has declared its queue and bound it: then a routed event reaches it."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.declare_exchange(
            names.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        for _ in range(300):
            try:
                # Unroutable until the binding exists; this key reaches no other queue of the test.
                probe = aio_pika.Message(b"{}", headers={"ce-id": "probe"})
                await exchange.publish(probe, "watch.probe.error", mandatory=True)
            except aio_pika.exceptions.DeliveryError:
                await asyncio.sleep(0.05)
                continue
            return
    raise AssertionError(f"the subscriber example did not bind {queue} within 15 s")
