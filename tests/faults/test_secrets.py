"""Passwords and Authorization headers never reach logs, events or dead-lettered messages."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from poller.simulator import FaultPlan, Simulator, running_simulator
from tests.faults.conftest import USER, drain, worker_config
from tests.faults.private_broker import free_port
from tests.faults.worker_process import WorkerProcess

pytestmark = pytest.mark.faults

#: Distinctive, so that any leak is found by a plain search.
SECRET = "Zq7-secret-ONTAP-pw-4f1c"
WRONG = "Zq7-wrong-ONTAP-pw-9b2e"
DOWN = "Zq7-down-ONTAP-pw-77aa"


def forms(password: str) -> list[str]:
    """The password and its HTTP basic-auth encodings."""
    token = base64.b64encode(f"{USER}:{password}".encode()).decode()
    return [password, token, token.rstrip("=")]


@pytest.mark.timeout(180)
async def test_no_password_in_logs_events_or_dead_letters(
    broker, names, events, publish, tmp_path: Path
) -> None:
    """Debug logs, events and the dead-letter queue hold no password nor basic-auth token."""
    secret_file = tmp_path / "ontap-password"
    secret_file.write_text(SECRET + "\n")  # as Docker secrets are written
    simulator = Simulator(username=USER, password=SECRET)
    # Seeded so that the very first call fails: a retry, with its reason, is logged for sure.
    simulator.faults = FaultPlan(error_rate=0.3, seed=2)
    ok = simulator.create_job(
        timeline=[{"after": 0, "state": "running"}, {"after": 1.5, "state": "success"}]
    )
    async with running_simulator(simulator) as url:
        config = worker_config(
            broker,
            names,
            clusters={
                "wrong": {"url": url, "username": USER, "password": WRONG},
                "down": {
                    "url": f"http://127.0.0.1:{free_port()}",
                    "username": USER,
                    "password": DOWN,
                },
            },
        )
        env = {
            "POLLER_ONTAP_URL": url,
            "POLLER_ONTAP_USERNAME": USER,
            "POLLER_ONTAP_PASSWORD_FILE": str(secret_file),
        }
        worker = WorkerProcess(
            tmp_path, "verbose", config, env=env, module="tests.faults.verbose_worker"
        )
        worker.start()
        try:
            await worker.wait_ready()
            requests = [
                {"uuid": ok, "cluster": "default"},
                {"uuid": "0cd8a442-86d1-11e0-ae1c-123478563412", "cluster": "default"},
                {"uuid": ok, "cluster": "wrong", "timeout": 5},
                {"uuid": ok, "cluster": "down", "timeout": 2},
            ]
            for request in requests:
                await publish(names.watch_queue, request, correlation_id=request["cluster"])
            await publish(names.watch_queue, b"not json")
            await events.wait_for(
                lambda es: (
                    {e.routing_key for e in es}
                    >= {
                        "job.default.success",
                        "watch.default.not_found",
                        "watch.wrong.error",
                        "watch.down.error",
                    }
                ),
                timeout_s=120,
            )
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"http://127.0.0.1:{worker.http_port}/metrics")).text
            dead = await drain(broker.url, names.dead_letter_queue)
        finally:
            worker.terminate()
            await worker.wait_exit(30)

    output = worker.output()
    assert '"level": "debug"' in output  # the search ran over debug logs
    assert "ontap.call_retrying" in output  # ... including retries of failed calls
    places = {"worker output": output, "metrics": metrics}
    for i, e in enumerate(events.events):
        places[f"event {i} {e.routing_key}"] = repr(e.headers) + repr(e.body)
    for message in dead:
        places[f"dead letter {message.message_id}"] = repr(message.headers) + repr(message.body)
    assert len(dead) == 1
    for where, text in places.items():
        for password in (SECRET, WRONG, DOWN):
            for form in forms(password):
                assert form not in text, f"{where} holds a form of a password"
    assert "Authorization" not in output and "authorization" not in output
