"""The per-job peer: jobs waited on the way users of NetApp's ``netapp_ontap`` library do it.

Each job is read with ``Job(uuid=...).get()`` every ``--interval`` seconds (5 s: netapp_ontap's own
default ``poll_interval``) until it reaches a final state, exactly as in

    while True:
        job.get()
        if job.state in FINAL: break
        time.sleep(interval)

except that the sleep is not slept on a pool thread: a job's next read is due ``interval`` after its
previous read started, and the reads run on a pool of ``--threads`` threads, each with its own
``HostConnection`` (so its own keep-alive connection). This is the most favourable form of per-job
polling: one thread per job would only add threads.

It is run by bench/run.py as a process of its own: it prints ``ready`` once netapp_ontap is
imported, reads one line from stdin (the go signal, sent once the jobs exist), polls until every job
ended or ``--deadline-s`` passed (or SIGTERM), and writes what it saw to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import heapq
import json
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from netapp_ontap import HostConnection
from netapp_ontap.error import NetAppRestError
from netapp_ontap.resources import Job

FINAL = frozenset({"success", "failure", "cancelled", "expired"})


class Peer:
    def __init__(self, uuids: list[str], interval_s: float, threads: int, url: str) -> None:
        self.interval_s = interval_s
        self.jobs: dict[str, dict[str, Any]] = {u: {"polls": 0, "changes": []} for u in uuids}
        self.errors = 0
        self._due = [(0.0, u) for u in uuids]
        self._pending = len(uuids)
        self._cond = threading.Condition()
        self._stopped = False
        parts = urlsplit(url)
        self._connection = {
            "host": parts.hostname,
            "port": parts.port,
            "scheme": parts.scheme,
            "username": "admin",
            "password": "netapp1!",
            "verify": False,
        }
        self._pool = ThreadPoolExecutor(threads, initializer=self._connect)

    def _connect(self) -> None:
        # netapp_ontap keeps the connection of a `with HostConnection(...)` block per thread.
        HostConnection(**self._connection).__enter__()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def run(self, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        now = time.time()
        self._due = [(now, u) for _, u in self._due]
        while True:
            with self._cond:
                if self._stopped or self._pending == 0 or time.monotonic() > deadline:
                    break
                now = time.time()
                if not self._due or self._due[0][0] > now:
                    wait_s = self._due[0][0] - now if self._due else 1.0
                    self._cond.wait(min(wait_s, 1.0))
                    continue
                _, uuid = heapq.heappop(self._due)
            self._pool.submit(self._poll, uuid)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _poll(self, uuid: str) -> None:
        started = time.time()
        state: str | None = None
        try:
            job = Job(uuid=uuid)
            job.get()
            state = str(job.state)
        except NetAppRestError as exc:
            status = exc.http_err_response.http_response.status_code if exc.http_err_response else 0
            state = "not_found" if status == 404 else None
        seen_at = time.time()
        with self._cond:
            record = self.jobs[uuid]
            record["polls"] += 1
            record.setdefault("first_poll", started)
            if state is None:
                self.errors += 1
            elif not record["changes"] or record["changes"][-1][0] != state:
                record["changes"].append([state, seen_at])
            if state in FINAL or state == "not_found":
                self._pending -= 1
            else:
                heapq.heappush(self._due, (started + self.interval_s, uuid))
            self._cond.notify()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the simulator, e.g. http://127.0.0.1:8080")
    parser.add_argument("--uuids", required=True, type=Path, help="JSON list of job UUIDs")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--deadline-s", type=float, default=600.0)
    args = parser.parse_args()
    print("ready", flush=True)
    sys.stdin.readline()  # go
    peer = Peer(json.loads(args.uuids.read_text()), args.interval, args.threads, args.url)
    signal.signal(signal.SIGTERM, lambda *_: peer.stop())
    peer.run(args.deadline_s)
    with peer._cond:  # a consistent snapshot of what the threads recorded
        result = {"jobs": peer.jobs, "errors": peer.errors}
        args.out.write_text(json.dumps(result))
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
