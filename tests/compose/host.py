"""What the engine changes on the host, recorded before the stack starts and put back after it.

netavark adds iptables chains (NETAVARK_FORWARD, NETAVARK-HOSTPORT-*, one per network), turns on
net.ipv4.ip_forward and starts aardvark-dns for the network's names. Only what appeared during the
test is undone: a chain, rule or process that was there before is left alone.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

TABLES = [(tool, table) for tool in ("iptables", "ip6tables") for table in ("filter", "nat")]
ENGINE_CHAINS = ("NETAVARK",)
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
AARDVARK_CONFIG = Path("/run/containers/networks/aardvark-dns")


def rules(tool: str, table: str) -> frozenset[str]:
    """The chains and rules of one table, as `iptables -S` prints them; none if it cannot."""
    if shutil.which(tool) is None:
        return frozenset()
    listed = subprocess.run(
        [tool, "-w", "-t", table, "-S"], capture_output=True, text=True, check=False, timeout=30
    )
    return frozenset(listed.stdout.splitlines()) if listed.returncode == 0 else frozenset()


def aardvark_pids() -> frozenset[int]:
    """The ids of the running aardvark-dns processes."""
    pids = set()
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "aardvark-dns":
                pids.add(int(comm.parent.name))
    return frozenset(pids)


@dataclass(frozen=True)
class HostState:
    """The host as the engine found it."""

    ip_forward: str
    tables: dict[tuple[str, str], frozenset[str]]
    aardvark: frozenset[int]


def capture() -> HostState:
    """Record the host before the engine touches it."""
    return HostState(
        ip_forward=IP_FORWARD.read_text().strip(),
        tables={key: rules(*key) for key in TABLES},
        aardvark=aardvark_pids(),
    )


def is_engine_chain(name: str) -> bool:
    """A chain that netavark names."""
    return name.startswith(ENGINE_CHAINS)


def iptables(tool: str, table: str, *args: str) -> str | None:
    """Run one iptables command; None if it worked, else what it said (teardown goes on)."""
    done = subprocess.run(
        [tool, "-w", "-t", table, *args], capture_output=True, text=True, check=False, timeout=30
    )
    return None if done.returncode == 0 else f"{tool} -t {table} {' '.join(args)}: {done.stderr}"


def remove_new_chains(tool: str, table: str, before: frozenset[str]) -> list[str]:
    """Delete the engine's chains that appeared since `before`, with the rules that use them."""
    added = rules(tool, table) - before
    chains = sorted(
        line.split()[1]
        for line in added
        if line.startswith("-N ") and is_engine_chain(line.split()[1])
    )
    commands = []
    for line in sorted(added):
        words = shlex.split(line)
        jump = words[words.index("-j") + 1] if "-j" in words else None
        if words[0] == "-A" and (words[1] in chains or jump in chains):
            commands.append(["-D", *words[1:]])
    # All emptied first: a chain can be deleted only once no other chain jumps to it.
    commands += [["-F", chain] for chain in chains] + [["-X", chain] for chain in chains]
    failed = [error for args in commands if (error := iptables(tool, table, *args))]
    return [f"{tool} -t {table} {chain}" for chain in chains] + failed


def end_new_aardvark(before: frozenset[int], wait_s: float = 5) -> list[int]:
    """End an aardvark-dns started during the test that outlives its networks (it should not)."""
    deadline = time.monotonic() + wait_s
    while (new := aardvark_pids() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    serving = [p for p in AARDVARK_CONFIG.glob("*") if not p.name.startswith("aardvark")]
    if not new or serving:
        return []  # gone, or still serving some network that is not this test's
    for pid in new:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return sorted(new)


def restore(before: HostState) -> list[str]:
    """Put the host back as `before` found it; what was undone, one line each."""
    undone = []
    for (tool, table), lines in before.tables.items():
        undone += remove_new_chains(tool, table, lines)
    undone += [f"aardvark-dns {pid}" for pid in end_new_aardvark(before.aardvark)]
    if IP_FORWARD.read_text().strip() != before.ip_forward:
        IP_FORWARD.write_text(before.ip_forward)
        undone.append(f"net.ipv4.ip_forward={before.ip_forward}")
    return undone
