"""The client API and its documented example, against a real broker, the simulator and a worker."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from poller.client import connect, publish_watch
from poller.errors import BrokerError
from poller.watch_cli import watch
from tests.fakes import FakeTTY
from tests.integration.conftest import cluster, make_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "watch_job.py"
SECRET = "Client-secret-pw-77e0"
SUCCESS = [
    {"after": 0, "state": "queued", "message": "Queued"},
    {"after": 0.3, "state": "running", "message": "Creating volume"},
    {"after": 0.6, "state": "success", "message": "Complete: Successful"},
]
FAILURE = [
    {"after": 0, "state": "running", "message": "Transferring"},
    {"after": 0.3, "state": "failure", "message": "Destination volume is full"},
]


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("watch_job_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_passes_mypy_strict() -> None:
    """examples/watch_job.py is fully typed: mypy --strict finds nothing."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(EXAMPLE)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_example_returns_the_final_event(sim, names, amqp_url, start_worker, capsys) -> None:
    """watch_job() prints each event of the job and returns job.c1.success."""
    simulator, base_url = sim
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    job = simulator.create_job(timeline=SUCCESS)

    final = await load_example().watch_job(amqp_url, job, cluster="c1", queue=names.watch_queue)

    assert final.key == "job.c1.success"
    assert final.data["uuid"] == job
    # structlog, not configured in this test, also prints the worker's lines to stdout.
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("job.")]
    assert printed == [
        "job.c1.queued: Queued",
        "job.c1.running: Creating volume",
        "job.c1.success: Complete: Successful",
    ]


@pytest.mark.timeout(120)
async def test_example_as_a_script_exits_by_outcome(sim, names, amqp_url, start_worker) -> None:
    """Run as documented, the example exits 1 for a failed job and names the final event."""
    simulator, base_url = sim
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    job = simulator.create_job(timeline=FAILURE)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        job,
        "--cluster=c1",
        f"--amqp-url={amqp_url}",
        f"--queue={names.watch_queue}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1, out.decode() + err.decode()
    assert re.search(
        r"^final: job\.c1\.failure \(ce-id [0-9a-f-]{36}\)$", out.decode(), re.MULTILINE
    )


async def test_example_without_a_worker_exits_3(names, amqp_url) -> None:
    """No worker has declared the queue: the example says so and exits 3, nothing is lost."""
    code = await asyncio.to_thread(
        load_example().main,
        [
            "1cd8a442-86d1-11e0-ae1c-123478563412",
            f"--amqp-url={amqp_url}",
            f"--queue={names.watch_queue}",
        ],
    )
    assert code == 3


async def test_publish_watch_sends_events_to_reply_to(
    sim, names, amqp_url, start_worker, subscribe
) -> None:
    """publish_watch with reply_to: every event of the watch arrives there with its correlation_id."""
    simulator, base_url = sim
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    replies, reply_queue = await subscribe(None)
    job = simulator.create_job(timeline=SUCCESS)
    connection = await connect(amqp_url)
    async with connection:
        correlation_id = await publish_watch(
            connection, job, cluster="c1", queue=names.watch_queue, reply_to=reply_queue
        )
    await replies.wait_for(lambda got: len(got) == 3)
    assert [e.key for e in replies.events()] == [
        "job.c1.queued",
        "job.c1.running",
        "job.c1.success",
    ]
    assert {m.correlation_id for m in replies.messages} == {correlation_id}


async def test_watch_wait_on_a_terminal_rewrites_one_line(
    sim, names, amqp_url, start_worker
) -> None:
    """`watch --wait` on a TTY: status updates in place, then one summary line; exit 0."""
    simulator, base_url = sim
    settings = make_settings(amqp_url, names, {"c1": cluster(base_url)})
    await start_worker(settings)
    job = simulator.create_job(timeline=SUCCESS)
    out = FakeTTY()

    code = await watch(settings, job, "c1", None, wait=True, out=out)

    text = out.getvalue()
    assert code == 0
    assert text.count("\n") == 1
    assert text.startswith("\r\x1b[Kwaiting")
    assert "\r\x1b[Krunning" in text
    assert re.search(
        rf"\r\x1b\[Kjob {job} success after [\d.]+s: Complete: Successful \(exit 0\)\n$", text
    )


async def test_watch_wait_off_a_terminal_prints_plain_lines(
    sim, names, amqp_url, start_worker
) -> None:
    """`watch --wait` into a pipe: one line per event, then the summary, no control characters."""
    simulator, base_url = sim
    settings = make_settings(amqp_url, names, {"c1": cluster(base_url)})
    await start_worker(settings)
    job = simulator.create_job(timeline=FAILURE)
    out = io.StringIO()

    code = await watch(settings, job, "c1", None, wait=True, out=out)

    lines = out.getvalue().splitlines()
    assert code == 1
    assert "\r" not in out.getvalue()
    assert [line.split()[1] for line in lines[:-1]] == ["job.c1.running", "job.c1.failure"]
    assert lines[-1].startswith(f"job {job} failure after ")


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_a_traceparent_sent_with_the_request_comes_back_on_every_event(
    sim, names, amqp_url, start_worker, subscribe
) -> None:
    """publish_watch(traceparent=...): the exchange's events and the replies carry it as ce-*."""
    simulator, base_url = sim
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    events, _ = await subscribe(names.events_exchange, "#")
    replies, reply_queue = await subscribe(None)
    job = simulator.create_job(timeline=SUCCESS)
    connection = await connect(amqp_url)
    async with connection:
        await publish_watch(
            connection,
            job,
            cluster="c1",
            queue=names.watch_queue,
            reply_to=reply_queue,
            traceparent=TRACEPARENT,
            tracestate="congo=t61rcWkgMzE",
        )
    await events.wait_keys("job.c1.success")
    await replies.wait_for(lambda got: len(got) == 3)
    for message in [*events.messages, *replies.messages]:
        assert message.headers["ce-traceparent"] == TRACEPARENT
        assert message.headers["ce-tracestate"] == "congo=t61rcWkgMzE"


async def test_watch_sends_a_traceparent(sim, names, amqp_url, start_worker, subscribe) -> None:
    """`watch --wait --traceparent TP`: every event of that watch came back in that trace."""
    simulator, base_url = sim
    settings = make_settings(amqp_url, names, {"c1": cluster(base_url)})
    await start_worker(settings)
    events, _ = await subscribe(names.events_exchange, "#")
    job = simulator.create_job(timeline=SUCCESS)

    code = await watch(
        settings, job, "c1", None, wait=True, traceparent=TRACEPARENT, out=io.StringIO()
    )

    assert code == 0
    await events.wait_keys("job.c1.success")
    assert {m.headers["ce-traceparent"] for m in events.messages} == {TRACEPARENT}


async def test_connect_takes_the_first_node_of_a_list_that_answers(amqp_url) -> None:
    """``connect`` with a list of nodes skips one that does not answer and uses the next."""
    connection = await connect([f"amqp://guest:{SECRET}@127.0.0.1:1/", amqp_url])
    async with connection:
        channel = await connection.channel()
        await channel.close()


async def test_connect_says_why_each_node_failed_without_passwords() -> None:
    """No node answers: ``BrokerError`` names each node and its failure, never a password."""
    nodes = [f"amqp://guest:{SECRET}@127.0.0.1:1/", f"amqps://poller:{SECRET}@127.0.0.1:2/vh"]
    with pytest.raises(BrokerError) as caught:
        await connect(nodes)
    text = str(caught.value)
    assert text.startswith("cannot connect to RabbitMQ: amqp://127.0.0.1:1/: ")
    assert "; amqps://127.0.0.1:2/vh: " in text
    assert SECRET not in text
