"""Hosts for a fleet on one machine: a Linux network namespace per replica, each with its own
address on a bridge that the host side is on, made with iproute2 and removed afterwards.

    with Network.create(3) as net:          # 10.203.N.1 on the host, replicas .11 .12 .13
        net.exec_prefix(0)                   # ("ip", "netns", "exec", "fleet-<pid>-0")
        net.cut(1); net.restore(1)           # `ip link set <veth> down` / up

    host: bridge fl<pid>b 10.203.N.1/24
      +-- veth fl<pid>h0 <-> eth0 10.203.N.11 in namespace fleet-<pid>-0
      +-- veth fl<pid>h1 <-> eth0 10.203.N.12 in namespace fleet-<pid>-1 ...

The namespaces have no route beyond their /24, so what runs in them reaches only the host and
each other. N is the first third octet of 10.203 that no interface uses (a lock file makes two
runs pick different ones). Everything is named after the creating process, so a run killed before
its clean-up is swept by the next one (its pid is gone). Needs root and iproute2 (`ip`). A slow
link is harness/delay_proxy.py: this kernel has no netem qdisc for `tc`.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

PREFIX = "10.203"
PORT_BASE = 11  # replica i is PREFIX.N.(PORT_BASE + i)
LOCK = "/tmp/fmnist-fleet-netns.lock"
_NAMESPACE = re.compile(r"^fleet-(\d+)-\d+$")
_LINK = re.compile(r"^fl(\d+)[bh]\d*$")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def missing_tools() -> list[str]:
    """The iproute2 command this module needs, when it is not installed."""
    return [tool for tool in ("ip",) if shutil.which(tool) is None]


@dataclass
class Network:
    """N replica hosts and the host side's bridge; `remove` (or leaving the `with`) undoes all."""

    size: int
    octet: int  # the N of 10.203.N.0/24
    tag: str = field(default_factory=lambda: str(os.getpid()))
    removed: bool = False

    @classmethod
    def create(cls, size: int) -> "Network":
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sweep_stale()
            net = cls(size, _free_octet())
            atexit.register(net.remove)
            try:
                net._build()
            except BaseException:
                net.remove()
                raise
        return net

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # --- names and addresses ------------------------------------------------------------------

    @property
    def bridge(self) -> str:
        return f"fl{self.tag}b"

    @property
    def host_address(self) -> str:
        return f"{PREFIX}.{self.octet}.1"

    def namespace(self, i: int) -> str:
        return f"fleet-{self.tag}-{i}"

    def veth(self, i: int) -> str:
        """The host side of replica i's link: what `cut` acts on."""
        return f"fl{self.tag}h{i}"

    def address(self, i: int) -> str:
        return f"{PREFIX}.{self.octet}.{PORT_BASE + i}"

    def exec_prefix(self, i: int) -> tuple[str, ...]:
        """The command prefix that runs a program in replica i's namespace (`ip netns exec`
        execs the program itself: its pid is the program's)."""
        return ("ip", "netns", "exec", self.namespace(i))

    # --- faults ---------------------------------------------------------------------------------

    def cut(self, i: int) -> None:
        """Replica i's link down: its packets go nowhere, nothing tells either side."""
        ip("link", "set", self.veth(i), "down")

    def restore(self, i: int) -> None:
        ip("link", "set", self.veth(i), "up")

    # --- building and removing ------------------------------------------------------------------

    def _build(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i in range(self.size):
            ns, peer = self.namespace(i), f"fl{self.tag}n{i}"
            ip("netns", "add", ns)
            ip("link", "add", self.veth(i), "type", "veth", "peer", "name", peer)
            ip("link", "set", peer, "netns", ns)
            ip("link", "set", self.veth(i), "master", self.bridge)
            ip("link", "set", self.veth(i), "up")
            inside = ("netns", "exec", ns, "ip")
            ip(*inside, "link", "set", "lo", "up")
            ip(*inside, "link", "set", peer, "name", "eth0")
            ip(*inside, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            ip(*inside, "link", "set", "eth0", "up")

    def remove(self) -> None:
        """Delete the namespaces (their ends of the veths go with them) and the bridge. Safe to
        call twice; processes still running in a namespace keep it until they exit, so stop
        them first."""
        if self.removed:
            return
        self.removed = True
        for i in range(self.size):
            ip("link", "del", self.veth(i), check=False)
            ip("netns", "del", self.namespace(i), check=False)
        ip("link", "del", self.bridge, check=False)


def sweep_stale() -> list[str]:
    """Remove the namespaces and links of runs whose process is gone (killed before its
    clean-up), and end what that run left running in them; returns their names."""
    gone = []
    for name in ip("netns", "list").stdout.split():
        if (m := _NAMESPACE.match(name)) and not _alive(int(m.group(1))):
            for pid in ip("netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)  # a replica of that run, orphaned
            ip("netns", "del", name, check=False)
            gone.append(name)
    for line in ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if (m := _LINK.match(name)) and not _alive(int(m.group(1))):
            ip("link", "del", name, check=False)
            gone.append(name)
    return gone


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _free_octet() -> int:
    used = set(re.findall(rf"inet {re.escape(PREFIX)}\.(\d+)\.",
                          ip("-4", "-o", "addr", "show").stdout))
    free = next((n for n in range(256) if str(n) not in used), None)
    if free is None:
        raise RuntimeError(f"every {PREFIX}.N.0/24 is in use on this host")
    return free
