"""The servers under test: refserver (``refserver init`` + ``run``) and a real Synapse.

Both use the interop fixture code (``tests/servers.py``, ``tests/synapse/peer.py``): their
federation certificates come from one development CA, which they trust, and so do the fleet's.
CPU time and RSS are read from ``/proc/<pid>`` (proc(5): ``stat`` fields 14–15, ``status``
``VmRSS``), for the whole process (every thread).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tests.servers import ServerProcess
from tests.synapse.peer import SynapsePeer, ensure_synapse, installed_version

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` in seconds (proc(5), /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS`` in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Target(Protocol):
    """What the driver needs to know about a server under test."""

    kind: str
    version: str

    @property
    def server_name(self) -> str: ...
    @property
    def base_url(self) -> str: ...
    @property
    def pid(self) -> int: ...
    def stop(self) -> object: ...


@dataclass
class RefserverTarget:
    process: ServerProcess
    kind: str = "refserver"
    version: str = "this checkout"

    @classmethod
    def start(cls, data_dir: Path, ca_dir: Path) -> RefserverTarget:
        process = ServerProcess(data_dir, ca_dir=ca_dir)
        process.init()
        process.start()
        return cls(process)

    @property
    def server_name(self) -> str:
        return self.process.server_name

    @property
    def base_url(self) -> str:
        return self.process.base_url

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def stop(self) -> object:
        code = self.process.stop() if self.process.proc is not None else None
        errors = logged_errors(self.process.log_path)
        if errors:
            # The data directory, and the log with it, is deleted when the run ends.
            print(
                f"[refserver] logged {len(errors)} error(s) during the run:",
                *errors,
                sep="\n",
                file=sys.stderr,
            )
        return code


#: A log record starts with the timestamp ``logging`` puts first in refserver's format.
_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.MULTILINE)


def logged_errors(log_path: Path) -> list[str]:
    """The ERROR and CRITICAL records of a refserver log, tracebacks included (an unhandled
    error in a request is one, logged where the client got a 500)."""
    if not log_path.exists():
        return []
    text = log_path.read_text(errors="replace")
    starts = [m.start() for m in _RECORD_START.finditer(text)]
    ends = [*starts[1:], len(text)]
    records = [text[a:b].rstrip("\n") for a, b in zip(starts, ends, strict=True)]
    return [r for r in records if r[24:].startswith(("ERROR ", "CRITICAL "))]


@dataclass
class SynapseTarget:
    peer: SynapsePeer
    version: str
    kind: str = "synapse"

    @classmethod
    def start(cls, data_dir: Path, ca_dir: Path) -> SynapseTarget:
        python = ensure_synapse()
        peer = SynapsePeer(python, data_dir, ca_dir)
        peer.write_config()
        peer.start()
        return cls(peer, installed_version(python))

    @property
    def server_name(self) -> str:
        return self.peer.server_name

    @property
    def base_url(self) -> str:
        return self.peer.base_url

    @property
    def pid(self) -> int:
        assert self.peer.proc is not None
        return self.peer.proc.pid

    def stop(self) -> object:
        return self.peer.stop()


@dataclass
class ExternalTarget:
    """A server started by someone else: its client URL, server name and PID are given."""

    base_url: str
    server_name: str
    pid: int
    version: str = "external"
    kind: str = "external"

    def stop(self) -> object:
        return None


def start_target(kind: str, data_dir: Path, ca_dir: Path) -> RefserverTarget | SynapseTarget:
    if kind == "refserver":
        return RefserverTarget.start(data_dir, ca_dir)
    if kind == "synapse":
        return SynapseTarget.start(data_dir, ca_dir)
    raise ValueError(f"unknown server kind {kind!r}")
