"""A real Synapse homeserver as a federation peer on loopback, and a raw Matrix client.

The Synapse settings here are the ones observed to work on this kind of machine
(docs/interop.md, "How the peer is set up"):

- :func:`ensure_synapse` installs ``matrix-synapse`` into a cached virtualenv (default
  ``<repo>/.synapse-venv``, override with ``REFSERVER_SYNAPSE_VENV``) when
  ``python -c "import synapse"`` fails there.
- :class:`SynapsePeer` writes a ``homeserver.yaml`` for ``localhost:<port>`` (plain client
  listener, TLS federation listener with a certificate from refserver's development CA,
  certificate verification on, loopback allowed, no key servers, raised rate limits, fast
  federation retries, an unbuffered log file), starts it and stops it by PID.
- :class:`MatrixClient` is a minimal client-server API client (httpx, no SDK) used for both
  servers, with a :meth:`MatrixClient.wait_for` helper that long-polls ``/sync`` until a
  predicate holds or a deadline passes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from refserver.crypto.keys import generate_key_file, key_id, read_key_file
from refserver.federation.tls import CA_CERT, issue_certificate, load_or_create_ca
from tests.servers import REPO, free_port

#: The Synapse release these tests were written and run against.
SYNAPSE_VERSION = "1.163.2"
SYNAPSE_REQUIREMENT = f"matrix-synapse=={SYNAPSE_VERSION}"
VENV_ENV_VAR = "REFSERVER_SYNAPSE_VENV"
DEFAULT_VENV = REPO / ".synapse-venv"
#: pip needs ~16 s on a warm machine; leave room for a slow mirror.
INSTALL_TIMEOUT_S = 900.0
#: First start ~3 s, later ones ~1.2 s (measured); a cold CI disk is slower.
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 80

JsonDict = dict[str, Any]


class SynapseInstallError(Exception):
    """Creating the virtualenv or ``pip install`` failed; the message holds their output."""


# -- installation -------------------------------------------------------------------------


def synapse_venv() -> Path:
    return Path(os.environ.get(VENV_ENV_VAR) or DEFAULT_VENV)


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _has_synapse(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import synapse"], capture_output=True, text=True, timeout=120
    )
    return probe.returncode == 0


def _run_logged(cmd: list[str], log: list[str]) -> int:
    log.append(f"$ {' '.join(cmd)}")
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.append(f"failed to run: {exc!r}")
        return -1
    log.extend([done.stdout, done.stderr, f"(exit code {done.returncode})"])
    return done.returncode


def ensure_synapse(venv: Path | None = None) -> Path:
    """The Python of a virtualenv that can ``import synapse``, installing it if needed.

    Installation runs under a file lock in the venv directory, so two test sessions never
    install into the same venv at once. Raises :class:`SynapseInstallError` with the full
    venv/pip output on failure.
    """
    venv = venv or synapse_venv()
    python = _venv_python(venv)
    if _has_synapse(python):
        return python
    venv.mkdir(parents=True, exist_ok=True)
    with (venv / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _has_synapse(python):  # another session installed it meanwhile
            return python
        log: list[str] = []
        if not python.exists() and _run_logged([sys.executable, "-m", "venv", str(venv)], log):
            raise SynapseInstallError("\n".join(log))
        if _run_logged([str(python), "-m", "pip", "install", SYNAPSE_REQUIREMENT], log):
            raise SynapseInstallError("\n".join(log))
        if not _has_synapse(python):
            raise SynapseInstallError("\n".join([*log, "pip succeeded but `import synapse` fails"]))
    return python


def installed_version(python: Path) -> str:
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('matrix-synapse'))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout.strip() or f"unknown ({done.stderr.strip()})"


# -- configuration ------------------------------------------------------------------------

#: Every rate limit Synapse applies to what these tests do, raised far out of the way.
_GENEROUS = {"per_second": 1000, "burst_count": 10000}
RATE_LIMITS: JsonDict = {
    "rc_message": _GENEROUS,
    "rc_registration": _GENEROUS,
    "rc_login": {"address": _GENEROUS, "account": _GENEROUS, "failed_attempts": _GENEROUS},
    "rc_joins": {"local": _GENEROUS, "remote": _GENEROUS},
    "rc_joins_per_room": _GENEROUS,
    "rc_invites": {"per_room": _GENEROUS, "per_user": _GENEROUS, "per_issuer": _GENEROUS},
    "rc_room_creation": _GENEROUS,
    "rc_profile": _GENEROUS,
    "rc_federation": {
        "window_size": 1000,
        "sleep_limit": 1000,
        "sleep_delay": 0,
        "reject_limit": 10000,
        "concurrent": 100,
    },
}

#: Retry a failed destination within seconds instead of Synapse's 10 minutes to 7 days.
FAST_FEDERATION_RETRIES: JsonDict = {
    "client_timeout": "10s",
    "max_short_retry_delay": "1s",
    "max_long_retry_delay": "2s",
    "max_short_retries": 2,
    "max_long_retries": 3,
    "destination_min_retry_interval": "2s",
    "destination_retry_multiplier": 1.5,
    "destination_max_retry_interval": "10s",
}


def log_config(log_file: Path) -> JsonDict:
    """An unbuffered ``logging.FileHandler`` (the generated config buffers INFO lines)."""
    return {
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                "%(request)s - %(message)s"
            }
        },
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filters": ["context"],
                "filename": str(log_file),
                "encoding": "utf8",
            }
        },
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def homeserver_config(
    *,
    server_name: str,
    data_dir: Path,
    client_port: int,
    federation_port: int,
    ca_pem: Path,
) -> JsonDict:
    """The homeserver.yaml content (JSON is YAML, so it is written with ``json.dumps``)."""
    return {
        "server_name": server_name,
        "public_baseurl": f"http://127.0.0.1:{client_port}/",
        "pid_file": str(data_dir / "homeserver.pid"),
        "report_stats": False,
        "listeners": [
            {
                "port": client_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            },
            {
                "port": federation_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": True,
                "resources": [{"names": ["federation", "keys"], "compress": False}],
            },
        ],
        "tls_certificate_path": str(data_dir / "tls.crt"),
        "tls_private_key_path": str(data_dir / "tls.key"),
        # Verify peers' certificates against refserver's development CA.
        "federation_custom_ca_list": [str(ca_pem)],
        # Loopback is in Synapse's default IP blocklist: without this every outbound request
        # fails with a misleading "Blocked 127.0.0.1 from DNS resolution to localhost".
        "ip_range_whitelist": ["127.0.0.1/8", "::1/128"],
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "database": {"name": "sqlite3", "args": {"database": str(data_dir / "homeserver.db")}},
        "log_config": str(data_dir / "log.config"),
        "media_store_path": str(data_dir / "media_store"),
        "signing_key_path": str(data_dir / "signing.key"),
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "registration_shared_secret": secrets.token_hex(16),
        "macaroon_secret_key": secrets.token_hex(16),
        "form_secret": secrets.token_hex(16),
        # Registration hashes the password; the default 12 rounds cost ~0.5 s per user.
        "bcrypt_rounds": 4,
        "enable_metrics": False,
        **RATE_LIMITS,
        "federation": FAST_FEDERATION_RETRIES,
    }


# -- the process --------------------------------------------------------------------------


@dataclass
class SynapsePeer:
    """One Synapse process: ``write_config()``, ``start()``, ``stop()``."""

    python: Path
    data_dir: Path
    ca_dir: Path
    client_port: int = field(default_factory=free_port)
    federation_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def server_name(self) -> str:
        return f"localhost:{self.federation_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def federation_url(self) -> str:
        return f"https://localhost:{self.federation_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "homeserver.log"

    @property
    def console_path(self) -> Path:
        """stdout/stderr of the process (start-up errors before logging is set up)."""
        return self.data_dir / "console.log"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "homeserver.db"

    @property
    def ca_pem(self) -> Path:
        return self.ca_dir / CA_CERT

    @property
    def signing_key_id(self) -> str:
        return str(key_id(read_key_file(self.data_dir / "signing.key")[0]))

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ca = load_or_create_ca(self.ca_dir)
        issue_certificate(ca, self.data_dir / "tls.crt", self.data_dir / "tls.key")
        key_path = self.data_dir / "signing.key"
        if not key_path.exists():
            generate_key_file(key_path)  # "ed25519 <version> <seed>": Synapse's own format
        (self.data_dir / "log.config").write_text(json.dumps(log_config(self.log_path), indent=2))
        config_path = self.data_dir / "homeserver.yaml"
        config = homeserver_config(
            server_name=self.server_name,
            data_dir=self.data_dir,
            client_port=self.client_port,
            federation_port=self.federation_port,
            ca_pem=self.ca_pem,
        )
        config_path.write_text(json.dumps(config, indent=2))
        return config_path

    def start(self) -> None:
        config_path = self.data_dir / "homeserver.yaml"
        console = self.console_path.open("ab")
        self.proc = subprocess.Popen(
            [str(self.python), "-m", "synapse.app.homeserver", "-c", str(config_path)],
            stdout=console,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        console.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"synapse exited early (code {self.proc.returncode}):\n{self.log_tail()}"
                )
            try:
                httpx.get(f"{self.base_url}/_matrix/client/versions", timeout=1.0)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"synapse did not answer within {START_TIMEOUT_S}s")
        # The TLS listener must present a certificate our dev CA vouches for.
        with httpx.Client(
            verify=ssl.create_default_context(cafile=self.ca_pem), timeout=5.0
        ) as tls:
            tls.get(f"{self.federation_url}/_matrix/key/v2/server").raise_for_status()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``; returns the exit code."""
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None
        return code

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for path in (self.console_path, self.log_path):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {len(text)} lines) ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no synapse log yet)"

    def log_lines(self, needle: str) -> list[str]:
        if not self.log_path.exists():
            return []
        return [
            line
            for line in self.log_path.read_text(errors="replace").splitlines()
            if needle in line
        ]


def read_sqlite(path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Read a running server's SQLite database (read-only connection)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# -- a raw client-server API client ---------------------------------------------------------


def q(value: str) -> str:
    """Percent-encode one path segment (room IDs, user IDs, event types)."""
    return quote(value, safe="")


@dataclass
class MatrixClient:
    """One logged-in user on one server, over raw HTTP, with a ``/sync`` position."""

    base_url: str
    user_id: str
    access_token: str
    since: str | None = None
    #: Every room event seen in /sync so far: timeline and state of joined/left rooms.
    events: dict[str, list[JsonDict]] = field(default_factory=dict)
    #: Rooms seen under rooms.invite, with their stripped state.
    invites: dict[str, list[JsonDict]] = field(default_factory=dict)

    @classmethod
    def register(cls, base_url: str, username: str) -> MatrixClient:
        r = httpx.post(
            f"{base_url}/_matrix/client/v3/register",
            json={
                "username": username,
                "password": "correct horse battery",
                "auth": {"type": "m.login.dummy"},
            },
            timeout=30.0,
        )
        assert r.status_code == 200, f"register {username} at {base_url}: {r.status_code} {r.text}"
        body = r.json()
        return cls(base_url, body["user_id"], body["access_token"])

    @property
    def server_name(self) -> str:
        return self.user_id.split(":", 1)[1]

    def request(
        self, method: str, path: str, *, json_body: JsonDict | None = None, **params: Any
    ) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.base_url}/_matrix/client{path}",
            json=json_body,
            params={k: v for k, v in params.items() if v is not None} or None,
            headers={"Authorization": f"Bearer {self.access_token}"},
            timeout=60.0,
        )

    def ok(
        self, method: str, path: str, *, json_body: JsonDict | None = None, **params: Any
    ) -> JsonDict:
        r = self.request(method, path, json_body=json_body, **params)
        assert r.status_code == 200, f"{method} {path} on {self.base_url}: {r.status_code} {r.text}"
        body: JsonDict = r.json()
        return body

    # -- shortcuts --------------------------------------------------------------------------

    def create_room(self, **body: Any) -> str:
        return str(self.ok("POST", "/v3/createRoom", json_body=body)["room_id"])

    def send_text(self, room_id: str, text: str) -> str:
        txn = secrets.token_hex(8)
        path = f"/v3/rooms/{q(room_id)}/send/m.room.message/{txn}"
        body = self.ok("PUT", path, json_body={"msgtype": "m.text", "body": text})
        return str(body["event_id"])

    def set_displayname(self, name: str) -> None:
        path = f"/v3/profile/{q(self.user_id)}/displayname"
        self.ok("PUT", path, json_body={"displayname": name})

    # -- /sync --------------------------------------------------------------------------------

    def sync_once(self, timeout_ms: int = 1000) -> JsonDict:
        body = self.ok("GET", "/v3/sync", since=self.since, timeout=timeout_ms)
        self.since = body["next_batch"]
        rooms = body.get("rooms", {})
        for section in ("join", "leave"):
            for room_id, room in rooms.get(section, {}).items():
                seen = self.events.setdefault(room_id, [])
                seen.extend(room.get("state", {}).get("events", []))
                seen.extend(room.get("timeline", {}).get("events", []))
        for room_id, room in rooms.get("invite", {}).items():
            self.invites[room_id] = room.get("invite_state", {}).get("events", [])
        return body

    def wait_for(
        self, predicate: Callable[[MatrixClient], Any], what: str, timeout_s: float = 30.0
    ) -> Any:
        """Long-poll /sync until ``predicate(self)`` is truthy; return its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate(self)
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{self.user_id}: timed out after {timeout_s}s waiting for {what}"
                )
            self.sync_once(timeout_ms=int(min(left, 2.0) * 1000))

    def room_events(self, room_id: str) -> list[JsonDict]:
        return self.events.get(room_id, [])

    def wait_for_event(
        self,
        room_id: str,
        match: Callable[[JsonDict], bool],
        what: str,
        timeout_s: float = 30.0,
    ) -> JsonDict:
        def find(c: MatrixClient) -> JsonDict | None:
            return next((e for e in c.room_events(room_id) if match(e)), None)

        event: JsonDict = self.wait_for(find, f"{what} in {room_id}", timeout_s)
        return event

    def messages(self, room_id: str, limit: int = 100) -> list[JsonDict]:
        """GET /rooms/{roomId}/messages, newest first."""
        body = self.ok("GET", f"/v3/rooms/{q(room_id)}/messages", dir="b", limit=limit)
        chunk: list[JsonDict] = body.get("chunk", [])
        return chunk


def is_message(text: str) -> Callable[[JsonDict], bool]:
    return lambda e: e.get("type") == "m.room.message" and e.get("content", {}).get("body") == text


def is_member(
    user_id: str, membership: str, displayname: str | None = None
) -> Callable[[JsonDict], bool]:
    def match(e: JsonDict) -> bool:
        content = e.get("content", {})
        return (
            e.get("type") == "m.room.member"
            and e.get("state_key") == user_id
            and content.get("membership") == membership
            and (displayname is None or content.get("displayname") == displayname)
        )

    return match


def poll(check: Callable[[], Any], what: str, timeout_s: float = 30.0, every_s: float = 0.2) -> Any:
    """Call ``check`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


def parse_metrics(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition → ``(name, labels, value)`` (no escapes in our labels)."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels: dict[str, str] = {}
        for pair in rest.rstrip("}").split(","):
            if "=" in pair:
                k, _, v = pair.partition("=")
                labels[k] = v.strip('"')
        yield name, labels, float(value)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    for n, found, value in parse_metrics(text):
        if n == name and all(found.get(k) == v for k, v in labels.items()):
            return value
    return None
