"""The compose demo: create a job on the simulator, then `ontap-job-poller watch UUID --wait`.

Run by the `demo-client` service of compose.yaml. The simulator's control API needs no password.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request

SIMULATOR = os.environ.get("DEMO_SIMULATOR_URL", "http://ontap-sim:8080")
TIMELINE = [
    {"after": 0, "state": "queued", "message": "Queued"},
    {"after": 2, "state": "running", "message": "Creating volume vol_demo"},
    {"after": 6, "state": "running", "message": "Setting volume attributes"},
    {"after": 9, "state": "success", "message": "Complete: Successful"},
]
EXIT_NOT_PUBLISHED = 3


def create_job() -> str:
    request = urllib.request.Request(  # noqa: S310 - the simulator's http URL from compose.yaml
        f"{SIMULATOR}/_sim/jobs",
        data=json.dumps({"description": "volume create", "timeline": TIMELINE}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - same URL
        return str(json.load(answer)["uuid"])


def main() -> int:
    uuid = create_job()
    print(f"created job {uuid} on the simulator; watching it", flush=True)
    # The worker is alive before it has declared its queue; until then `watch` exits 3.
    for _ in range(60):
        code = subprocess.call(["ontap-job-poller", "watch", uuid, "--wait"])  # noqa: S603, S607
        if code != EXIT_NOT_PUBLISHED:
            return code
        time.sleep(1)
    return EXIT_NOT_PUBLISHED


if __name__ == "__main__":
    sys.exit(main())
