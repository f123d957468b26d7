"""The command line as a user runs it: real processes, the real broker, the simulator over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import pytest

from poller.simulator import FaultPlan
from tests.contract import end_id
from tests.integration.conftest import PASSWORD, cluster, make_settings, wait_for_queue

pytestmark = pytest.mark.integration


def cli_env(amqp_url: str, names, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.update(
        POLLER_AMQP_URL=amqp_url,
        POLLER_WATCH_QUEUE=names.watch_queue,
        POLLER_DEAD_LETTER_QUEUE=names.dead_letter_queue,
        POLLER_EVENTS_EXCHANGE=names.events_exchange,
        POLLER_HTTP_PORT="0",
        POLLER_LOG_FORMAT="json",
    )
    env.update(extra)
    return env


async def start_cli(
    *args: str,
    env: dict[str, str],
    stdout: int = asyncio.subprocess.PIPE,
    stderr: int = asyncio.subprocess.PIPE,
) -> asyncio.subprocess.Process:
    """``ontap-job-poller ARGS`` as a process of its own."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poller", *args, env=env, stdout=stdout, stderr=stderr
    )


async def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    process = await start_cli(*args, env=env)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.mark.parametrize(
    ("timeline", "expected_exit", "final_key"),
    [
        (
            [{"after": 0, "state": "running"}, {"after": 0.5, "state": "success"}],
            0,
            "job.c1.success",
        ),
        (
            [{"after": 0, "state": "running"}, {"after": 0.5, "state": "failure", "code": 1}],
            1,
            "job.c1.failure",
        ),
        (None, 2, "watch.c1.not_found"),
    ],
    ids=["success", "failure", "not_found"],
)
async def test_watch_wait_prints_events_and_exits_by_outcome(
    sim, names, amqp_url, start_worker, timeline, expected_exit, final_key
) -> None:
    """`watch UUID --wait` prints the job's events and exits 0, 1 or 2 by its outcome."""
    simulator, base_url = sim
    job = simulator.create_job(timeline=timeline) if timeline else str(uuid.uuid4())
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))

    code, out, _ = await run_cli(
        "watch", job, "--wait", "--timeout", "30", env=cli_env(amqp_url, names)
    )

    assert code == expected_exit, out
    assert final_key in out


@pytest.mark.parametrize(
    ("case", "expected_exit", "final_key"),
    [
        ("cancelled", 1, "job.c1.cancelled"),
        ("timeout", 2, "watch.c1.timeout"),
        ("error", 2, "watch.c1.error"),
    ],
)
async def test_watch_wait_exits_1_when_cancelled_and_2_on_timeout_or_error(
    sim, names, amqp_url, start_worker, case, expected_exit, final_key
) -> None:
    """`watch UUID --wait`: a cancelled job exits 1; a watch ending in timeout or error exits 2."""
    simulator, base_url = sim
    running = {"after": 0, "state": "running", "message": "Working"}
    timeline = [running]
    if case == "cancelled":
        timeline.append({"after": 0.5, "state": "cancelled", "message": "Cancelled by admin"})
    if case == "error":
        simulator.faults = FaultPlan(status_override=401)  # ONTAP refuses the credentials
    job = simulator.create_job(timeline=timeline)
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    timeout = "1" if case == "timeout" else "30"

    code, out, _ = await run_cli(
        "watch", job, "--wait", "--timeout", timeout, env=cli_env(amqp_url, names)
    )

    assert code == expected_exit, out
    lines = out.strip().splitlines()
    assert final_key in lines[-2], out  # the final event, then the summary
    assert lines[-1].startswith(f"job {job} ") and lines[-1].endswith(f"(exit {expected_exit})")


async def read_line(stream: asyncio.StreamReader, timeout_s: float) -> str | None:
    """The next line of ``stream``, or None when none came within ``timeout_s``."""
    try:
        line = await asyncio.wait_for(stream.readline(), timeout_s)
    except TimeoutError:
        return None
    return line.decode() or None


async def test_events_prints_bound_events_as_json_lines_and_stops_on_sigint(
    sim, names, amqp_url, start_worker, publish
) -> None:
    """`events --bind K...` prints each event routed by K as one JSON line; SIGINT exits 0."""
    simulator, base_url = sim
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    events = await start_cli(
        "events",
        "--bind",
        "job.*.success",
        "--bind",
        "watch.*.not_found",
        env=cli_env(amqp_url, names),
    )
    assert events.stdout is not None
    lines: list[str] = []
    try:
        # It prints nothing once subscribed: watch unknown jobs until the end of one shows.
        for _ in range(40):
            await publish(names.watch_queue, {"uuid": str(uuid.uuid4())})
            if (line := await read_line(events.stdout, 0.5)) is not None:
                lines.append(line)
                break
        else:
            raise AssertionError("events printed nothing within 20 s")
        job = simulator.create_job(
            timeline=[{"after": 0, "state": "running"}, {"after": 1, "state": "success"}]
        )
        await publish(names.watch_queue, {"uuid": job})
        while json.loads(lines[-1])["routing_key"] != "job.c1.success":
            line = await read_line(events.stdout, 15)
            assert line is not None, f"no job.c1.success line within 15 s: {lines}"
            lines.append(line)
        await asyncio.sleep(0.5)  # job.c1.running would be printed by now, were it bound

        events.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(events.communicate(), 10)
    finally:
        if events.returncode is None:
            events.kill()
            await events.wait()

    assert events.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    printed = [json.loads(line) for line in [*lines, *rest.decode().splitlines()]]
    assert {tuple(sorted(p)) for p in printed} == {("body", "headers", "properties", "routing_key")}
    assert {p["routing_key"] for p in printed} == {"watch.c1.not_found", "job.c1.success"}
    (success,) = [p for p in printed if p["routing_key"] == "job.c1.success"]
    assert success["headers"]["ce-subject"] == job
    assert success["headers"]["ce-id"] == end_id("c1", job, "success")
    assert success["properties"]["message_id"] == end_id("c1", job, "success")
    assert success["body"]["state"] == "success"


async def test_watch_without_a_worker_exits_3_and_says_why(names, amqp_url) -> None:
    """With no queue declared the request is refused loudly (exit 3), not lost."""
    code, _, err = await run_cli("watch", str(uuid.uuid4()), env=cli_env(amqp_url, names))
    assert code == 3
    assert "is a worker running?" in err


async def test_run_without_a_cluster_refuses_to_start(names, amqp_url) -> None:
    """`run` with no cluster stops at once with one line naming the key."""
    code, _, err = await run_cli("run", env=cli_env(amqp_url, names))
    assert code == 78
    assert err.strip().splitlines() == [
        "ontap-job-poller: config error: clusters: no cluster configured; add a [clusters.NAME] "
        "table or set POLLER_ONTAP_URL"
    ]


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"POLLER_POLL_INTERVAL_MAX": "300"}, "poll_interval_max"),
        ({"POLLER_MAX_WATCHES": "many"}, "max_watches"),
        ({"POLLER_LOG_FORMAT": "xml"}, "log_format"),
        (
            {
                "POLLER_ONTAP_URL": "ftp://x",
                "POLLER_ONTAP_USERNAME": "a",
                "POLLER_ONTAP_PASSWORD": "b",
            },
            "ontap_url",
        ),
    ],
)
async def test_bad_configuration_stops_run_with_one_line_naming_the_key(
    names, amqp_url, extra, key
) -> None:
    """A bad value is one stderr line that names the key, and nothing starts."""
    code, _, err = await run_cli("run", env=cli_env(amqp_url, names, **extra))
    lines = err.strip().splitlines()
    assert code == 78
    assert len(lines) == 1 and key in lines[0]


async def test_config_file_and_env_override(tmp_path, sim, names, amqp_url, start_worker) -> None:
    """--config FILE is read; a POLLER_* variable overrides a key of it."""
    simulator, base_url = sim
    job = simulator.create_job(timeline=[{"after": 0, "state": "success"}])
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    config = tmp_path / "poller.toml"
    config.write_text(f'amqp_url = "{amqp_url}"\nwatch_queue = "wrong.queue"\n')
    env = cli_env(amqp_url, names)
    env.pop("POLLER_AMQP_URL")

    code, out, _ = await run_cli("watch", job, "--wait", "--config", str(config), env=env)

    assert code == 0
    assert "job.c1.success" in out


async def test_run_worker_process_end_to_end(sim, names, amqp_url, subscribe) -> None:
    """`run` as a process, configured by env alone, turns a request into events; SIGTERM exits 0."""
    simulator, base_url = sim
    job = simulator.create_job(
        timeline=[{"after": 0, "state": "running"}, {"after": 4, "state": "success"}]
    )
    env = cli_env(
        amqp_url,
        names,
        POLLER_ONTAP_URL=base_url,
        POLLER_ONTAP_USERNAME="admin",
        POLLER_ONTAP_PASSWORD=PASSWORD,
        POLLER_ONTAP_NAME="c1",
        POLLER_POLL_INTERVAL_MIN="0.2",
        POLLER_POLL_INTERVAL_MAX="0.5",
    )
    worker = await start_cli("run", env=env)
    try:
        await wait_for_queue(amqp_url, names.watch_queue)
        events, _ = await subscribe(names.events_exchange, "#")
        code, _, _ = await run_cli("watch", job, env=cli_env(amqp_url, names))
        assert code == 0
        await events.wait_keys("job.c1.running", "job.c1.success")
    finally:
        worker.terminate()
        _, stderr = await asyncio.wait_for(worker.communicate(), 15)
    assert worker.returncode == 0
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert {"worker.started", "worker.stopped"} <= {line["event"] for line in lines}
    assert PASSWORD not in stderr.decode()


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on: its sockets' inodes in /proc/<pid>/net/tcp{,6}."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    ports = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.parametrize("http_port", ["0", "free"], ids=["off", "on"])
async def test_http_port_0_turns_the_ops_server_off_and_the_worker_still_works(
    sim, names, amqp_url, subscribe, http_port
) -> None:
    """`run` with http_port 0 listens on no port at all, and still turns a request into events.

    With a port (the control), it listens there and nowhere else.
    """
    simulator, base_url = sim
    if http_port == "free":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            http_port = str(probe.getsockname()[1])
    job = simulator.create_job(
        timeline=[{"after": 0, "state": "running"}, {"after": 1, "state": "success"}]
    )
    env = cli_env(
        amqp_url,
        names,
        POLLER_HTTP_PORT=http_port,
        POLLER_ONTAP_URL=base_url,
        POLLER_ONTAP_USERNAME="admin",
        POLLER_ONTAP_PASSWORD=PASSWORD,
        POLLER_ONTAP_NAME="c1",
        POLLER_POLL_INTERVAL_MIN="0.2",
    )
    worker = await start_cli("run", env=env, stdout=asyncio.subprocess.DEVNULL)
    try:
        await wait_for_queue(amqp_url, names.watch_queue)
        events, _ = await subscribe(names.events_exchange, "#")
        code, _, _ = await run_cli("watch", job, env=cli_env(amqp_url, names))
        assert code == 0
        await events.wait_keys("job.c1.success")
        listening = listening_ports(worker.pid)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(worker.communicate(), 15)

    assert worker.returncode == 0, stderr.decode()[-2000:]
    expected = set() if http_port == "0" else {int(http_port)}
    assert listening == expected, f"http_port {http_port}: listening on {listening}"


async def test_demo_prints_three_outcomes_and_exits_0(amqp_url) -> None:
    """`demo` shows success, failure and not_found events and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.update(POLLER_AMQP_URL=amqp_url, POLLER_HTTP_PORT="0")
    code, out, _ = await run_cli("demo", env=env, timeout=90)
    assert code == 0, out
    for key in ("job.demo.success", "job.demo.failure", "watch.demo.not_found"):
        assert key in out
    assert out.strip().endswith("done: success, failure, not_found")


async def test_three_terminals_simulate_run_watch(names, amqp_url, tmp_path) -> None:
    """`simulate`, `run` and `watch --wait` as three processes: the job's events, exit 0."""
    import socket

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    secret = tmp_path / "password"
    secret.write_text("netapp1!\n")  # as a Docker secret: with its trailing newline
    simulate = await start_cli(
        "simulate",
        "--port",
        str(port),
        env=cli_env(amqp_url, names),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    run_env = cli_env(
        amqp_url,
        names,
        POLLER_ONTAP_URL=f"http://127.0.0.1:{port}",
        POLLER_ONTAP_USERNAME="admin",
        POLLER_ONTAP_PASSWORD_FILE=str(secret),
        POLLER_POLL_INTERVAL_MIN="0.2",
    )
    worker = await start_cli(
        "run", env=run_env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(100):
                try:
                    created = await http.post("/_sim/jobs", json={})
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the simulator did not start")
        job = created.json()["uuid"]
        from tests.integration.conftest import wait_for_queue

        await wait_for_queue(amqp_url, names.watch_queue)
        code, out, _ = await run_cli("watch", job, "--wait", env=cli_env(amqp_url, names))
    finally:
        for process in (worker, simulate):
            process.terminate()
            await asyncio.wait_for(process.wait(), 15)
    assert code == 0, out
    assert "job.default.success" in out
    assert worker.returncode == 0
