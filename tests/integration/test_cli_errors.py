"""Mistakes a new user makes end in one or two lines naming the file or port and the fix,
with a non-zero exit status: never a traceback.

Each case runs the real command line in a subprocess.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tests.servers import REPO, ServerProcess

#: Every case here fails at start-up; a command still running after this is a bug.
COMMAND_TIMEOUT_S = 60.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "refserver.app.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=COMMAND_TIMEOUT_S,
    )


def assert_short_error(out: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit status 1, at most two lines on stderr, each of ``names`` in them; the text."""
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, out.stderr
    for name in names:
        assert name in out.stderr, (name, out.stderr)
    return out.stderr


@contextmanager
def listening(port: int) -> Iterator[None]:
    """Another program listening on ``port``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        yield


def instance(data_dir: Path) -> ServerProcess:
    srv = ServerProcess(data_dir)
    srv.init()
    return srv


def test_run_with_the_client_port_taken_names_the_port(tmp_path: Path) -> None:
    srv = instance(tmp_path / "hs")
    with listening(srv.client_port):
        out = cli("run", "--data-dir", str(srv.data_dir))
    assert_short_error(out, f"port {srv.client_port}", "[client] port", "refserver.toml")


def test_run_with_the_federation_port_taken_starts_no_listener(tmp_path: Path) -> None:
    srv = instance(tmp_path / "hs")
    with listening(srv.federation_port):
        out = cli("run", "--data-dir", str(srv.data_dir))
    assert_short_error(out, f"port {srv.federation_port}", "[federation] port")
    # Both ports are bound before either listener serves: the client one never started.
    assert "Running on" not in out.stderr and "refserver ready" not in out.stderr


def test_run_with_config_given_a_directory_says_which_file_to_give(tmp_path: Path) -> None:
    srv = instance(tmp_path / "hs")
    out = cli("run", "--config", str(srv.data_dir))
    assert_short_error(out, str(srv.data_dir / "refserver.toml"), "--data-dir")


def test_run_without_tls_certificate_names_the_file(tmp_path: Path) -> None:
    srv = instance(tmp_path / "hs")
    (srv.data_dir / "tls.crt").unlink()
    out = cli("run", "--data-dir", str(srv.data_dir))
    assert_short_error(out, str(srv.data_dir / "tls.crt"), "tls_certificate_path")


def test_init_under_a_file_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a directory\n")
    out = cli("init", "--data-dir", str(blocker / "hs"))
    assert_short_error(out, str(blocker), "--data-dir")


def test_init_with_one_port_for_both_listeners_names_the_port(tmp_path: Path) -> None:
    out = cli(
        "init", "--data-dir", str(tmp_path / "hs"), "--client-port", "9448",
        "--federation-port", "9448",
    )  # fmt: skip
    assert_short_error(out, "9448", "--client-port", "--federation-port")
    assert not (tmp_path / "hs" / "refserver.toml").exists()


def demo_instances(
    data_dir: Path, hs1_settings: dict[tuple[str, str], str] | None = None
) -> list[ServerProcess]:
    """hs1 and hs2 for ``refserver demo --data-dir data_dir``, made with ``refserver init``."""
    servers = [
        ServerProcess(
            data_dir / name,
            settings=settings,
            ca_dir=data_dir / "ca",
        )
        for name, settings in (("hs1", hs1_settings or {}), ("hs2", {}))
    ]
    for srv in servers:
        srv.init()
    return servers


def test_demo_with_a_federation_port_taken_says_which_in_one_line(tmp_path: Path) -> None:
    hs1, _ = demo_instances(tmp_path)
    with listening(hs1.federation_port):
        out = cli("demo", "--data-dir", str(tmp_path), "--any-ports", "--exit-after-setup")
    text = assert_short_error(out, f"port {hs1.federation_port} is in use", "--data-dir")
    assert len(text.strip().splitlines()) == 1


def test_demo_refuses_undocumented_ports_without_any_ports(tmp_path: Path) -> None:
    hs1, _ = demo_instances(tmp_path)
    config_before = (hs1.data_dir / "refserver.toml").read_text()
    out = cli("demo", "--data-dir", str(tmp_path), "--exit-after-setup")
    assert_short_error(out, str(hs1.federation_port), "--any-ports")
    assert (hs1.data_dir / "refserver.toml").read_text() == config_before
    ports = tomllib.loads(config_before)
    assert ports["federation"]["port"] == hs1.federation_port


def _lines(stream: IO[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for_line(lines: queue.Queue[str], start: str) -> None:
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=COMMAND_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(f"no line starting {start!r}; saw {seen}") from None
        seen.append(line)
        if line.strip().startswith(start):
            return


def test_ctrl_c_during_the_demo_scene_exits_130_without_a_traceback(tmp_path: Path) -> None:
    # hs1 sends no profile EDUs, so the scene waits at alice's first edit until interrupted.
    demo_instances(tmp_path, {("msc4259", "enabled"): "false"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "refserver.app.cli", "demo", "--data-dir", str(tmp_path),
         "--any-ports", "--timeout", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        _wait_for_line(_lines(proc.stdout), "alice sets m.tz")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=COMMAND_TIMEOUT_S)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert 1 <= len(stderr.strip().splitlines()) <= 2, stderr
