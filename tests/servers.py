"""Real refserver processes on loopback for black-box tests.

Each :class:`ServerProcess` is ``refserver init`` + ``refserver run`` in a temporary data
directory on free loopback ports, driven over real HTTP.
"""

from __future__ import annotations

import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
#: argon2id at its defaults (64 MiB, 3 passes) was about a quarter of the suite's CPU; test
#: servers hash cheaply unless a test sets ``[passwords]`` itself (the login-flood test does).
CHEAP_PASSWORD_HASHING = {
    ("passwords", "argon2_time_cost"): "1",
    ("passwords", "argon2_memory_kib"): "1024",
    ("passwords", "argon2_parallelism"): "1",
}
#: The defaults of ``[passwords]``, for a test that needs real hashing cost.
REAL_PASSWORD_HASHING = {
    ("passwords", "argon2_time_cost"): "3",
    ("passwords", "argon2_memory_kib"): "65536",
    ("passwords", "argon2_parallelism"): "4",
}


#: Test servers listen on ports below Linux's ephemeral range (32768–60999), so no outgoing
#: connection can take a port between ``free_port()`` and the server's bind. Under
#: pytest-xdist, worker ``gwN`` of ``W`` only hands out ports with ``port % W == N``, so two
#: workers never pick the same one. (Not ``bind(("127.0.0.1", 0))``: Linux gives out only odd
#: ports that way.)
PORT_RANGE = range(20000, 32768)
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_WORKER_INDEX = int(_WORKER.removeprefix("gw")) if _WORKER.startswith("gw") else 0
_WORKER_COUNT = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_issued: set[int] = set()


def wait_until(check: Callable[[], Any], *, timeout: float = 15.0, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds,
    naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    """A loopback port nothing listens on, this worker's, and never handed out before by this
    process (servers get their ports before they bind them)."""
    for _ in range(1000):
        port = random.randrange(PORT_RANGE.start, PORT_RANGE.stop)
        port -= (port - _WORKER_INDEX) % _WORKER_COUNT
        if port < PORT_RANGE.start or port in _issued:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _issued.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {PORT_RANGE}")


def set_config_value(text: str, section: str, key: str, literal: str) -> str:
    """Replace ``key = ...`` inside ``[section]`` of a TOML text written by ``refserver init``."""
    pattern = re.compile(
        rf"(^\[{re.escape(section)}\]\n(?:(?!^\[).*\n)*?){re.escape(key)} = .*$", re.M
    )
    new, count = pattern.subn(lambda m: f"{m.group(1)}{key} = {literal}", text)
    assert count == 1, f"{section}.{key} not found in config"
    return new


def refserver_cli(
    *args: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "refserver.app.cli", *args],
        capture_output=True,
        text=True,
        check=check,
        input=input,
        cwd=REPO,
        timeout=120,
    )


@dataclass
class ServerProcess:
    data_dir: Path
    settings: dict[tuple[str, str], str] = field(default_factory=dict)
    client_port: int = field(default_factory=free_port)
    federation_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    ca_dir: Path | None = None
    #: RLIMIT_NOFILE (soft and hard) for the server process; None: inherited.
    nofile_limit: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def server_name(self) -> str:
        return f"localhost:{self.federation_port}"

    @property
    def federation_url(self) -> str:
        return f"https://localhost:{self.federation_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def metrics_url(self) -> str:
        """``GET /metrics`` on the server's own loopback metrics listener (``[metrics]``)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def init(self) -> None:
        refserver_cli(
            "init",
            "--data-dir",
            str(self.data_dir),
            "--server-name",
            self.server_name,
            "--client-port",
            str(self.client_port),
            "--federation-port",
            str(self.federation_port),
            *(["--ca-dir", str(self.ca_dir)] if self.ca_dir else []),
        )
        config = self.data_dir / "refserver.toml"
        text = set_config_value(config.read_text(), "metrics", "port", str(self.metrics_port))
        for (section, key), literal in {**CHEAP_PASSWORD_HASHING, **self.settings}.items():
            text = set_config_value(text, section, key, literal)
        config.write_text(text)

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "refserver.app.cli", "run", "--data-dir", str(self.data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=None if self.nofile_limit is None else self._limit_descriptors,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"refserver exited early:\n{self.log_path.read_text()}")
            try:
                httpx.get(f"{self.base_url}/_matrix/client/versions", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"refserver did not start:\n{self.log_path.read_text()}")

    def _limit_descriptors(self) -> None:
        assert self.nofile_limit is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile_limit, self.nofile_limit))

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code (0 = clean shutdown)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as after a crash or power loss. ``start()`` runs it again."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=15)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def ca_pem(self) -> Path:
        """The development CA that issued this server's TLS certificate."""
        return (self.ca_dir or self.data_dir / "ca") / "ca.pem"

    # -- small client helpers (raw HTTP) --------------------------------------------------

    def url(self, path: str) -> str:
        return f"{self.base_url}/_matrix/client{path}"

    def register(self, username: str, password: str = "correct horse") -> tuple[str, str]:
        r = httpx.post(
            self.url("/v3/register"),
            json={"username": username, "password": password, "auth": {"type": "m.login.dummy"}},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        return body["user_id"], body["access_token"]


def start_federation(
    base_dir: Path, count: int, settings: dict[tuple[str, str], str] | None = None
) -> list[ServerProcess]:
    """``count`` servers sharing one development CA (so they trust each other), started at once.

    ``init`` runs one server at a time (the first creates the CA); the processes then start
    in parallel, which saves a couple of seconds per server.
    """
    ca_dir = base_dir / "ca"
    servers = [
        ServerProcess(base_dir / f"hs{n + 1}", settings=dict(settings or {}), ca_dir=ca_dir)
        for n in range(count)
    ]
    for srv in servers:
        srv.init()
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            list(pool.map(ServerProcess.start, servers))
    except BaseException:
        stop_all(servers)
        raise
    return servers


def stop_all(servers: list[ServerProcess]) -> None:
    """Stop every running server at once (each may spend its grace period on open
    keep-alive connections from its peers)."""
    running = [srv for srv in servers if srv.proc is not None]
    if running:
        with ThreadPoolExecutor(max_workers=len(running)) as pool:
            list(pool.map(ServerProcess.stop, running))
