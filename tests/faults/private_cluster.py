"""A private RabbitMQ cluster for the fault tests: several ``PrivateBroker`` nodes joined as one.

Each node has its own node name, AMQP and distribution ports, data dir and logs; they share one
Erlang cookie (a common HOME) and one epmd of their own (the first node's), and are joined with
``rabbitmqctl join_cluster``. The machine's shared broker and its epmd are never touched.
"""

from __future__ import annotations

import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.faults.private_broker import BrokerUnavailable, PrivateBroker


class PrivateCluster:
    """``size`` clustered nodes under ``root``; ``nodes[0]`` is the one the others join."""

    def __init__(self, root: Path, size: int = 3) -> None:
        home = root / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        first = PrivateBroker(root / "node0", home=home)
        shared = [
            PrivateBroker(root / f"node{i}", home=home, epmd=first.epmd_port)
            for i in range(1, size)
        ]
        self.nodes = [first, *shared]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> None:
        """Boot every node at once (the first one's epmd before), then join the others to the
        first; ``BrokerUnavailable`` if the cluster does not form."""
        self.nodes[0].start_epmd()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for started in [pool.submit(node.start) for node in self.nodes]:
                started.result()
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            node.rabbitmqctl("stop_app")
            node.rabbitmqctl("join_cluster", seed.nodename)
            node.rabbitmqctl("start_app")
        running = self.running_nodes(seed)
        expected = {node.nodename for node in self.nodes}
        if running != expected:
            raise BrokerUnavailable(f"the cluster did not form: running {sorted(running)}")

    def running_nodes(self, via: PrivateBroker) -> set[str]:
        status = json.loads(via.rabbitmqctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def leader(self, queue: str, via: PrivateBroker) -> str:
        """The node name of a quorum queue's leader, as ``via`` sees it."""
        listed = json.loads(via.rabbitmqctl("list_queues", "name", "leader", "--formatter", "json"))
        for row in listed:
            if row["name"] == queue:
                return str(row["leader"])
        raise AssertionError(f"queue {queue} is not declared")

    def node_of(self, url: str) -> PrivateBroker:
        """The node whose AMQP port ``url`` names (credentials and query aside)."""
        for node in self.nodes:
            if f":{node.port}/" in url:
                return node
        raise AssertionError(f"{url} is no node of this cluster")

    def kill(self) -> None:
        """Kill every node, as a crash would."""
        for node in self.nodes:
            node.kill()

    def close(self) -> None:
        """Gone for good: every node, and the epmd they shared (the first node's)."""
        for node in reversed(self.nodes):
            node.close()
