"""Every ``sh`` block in README.md and docs/*.md runs verbatim on a fresh checkout.

The blocks are taken from the Markdown as written; an HTML comment on the line right before a
block's opening fence says how to treat it:

- no comment: the block is **run** with ``bash -e -o pipefail``; it must exit 0, and every
  ``# → …`` line in it must match one line of its output, in order (``…`` stands for anything:
  tokens, device IDs, times);
- ``<!-- not-run: REASON -->``: not run, for the reason given (installing packages, running the
  whole suite); a marker without a reason fails :func:`test_every_sh_block_is_run_or_says_why_not`;
- ``<!-- background: ready when URL answers -->`` or ``<!-- background: ready when PATH
  exists -->``: started in the background (its own process group) and waited for until the
  condition holds; the blocks after it in the same file talk to it, and it gets SIGINT when they
  are done.

Each Markdown file runs in a fresh temporary directory standing in for a fresh checkout:
``.venv`` there is a symlink to the virtualenv running the tests, whose ``bin`` is also first on
``PATH`` (as after ``. .venv/bin/activate``), so both ``.venv/bin/refserver`` and ``refserver``
work. Proxy variables are dropped from the environment, since the commands only talk to
loopback.

Ports: the blocks use the documented ports (8008/8448 for one instance, 8008/8448 and 8009/8449
for the demo) verbatim. The test does not move them: if one is already taken it fails at once,
naming the port, because a command that works only on other ports is not what a reader runs.
Under pytest-xdist this file runs on one worker (``--dist loadfile``), so its instances never
overlap; no other test binds these ports (the others use ``tests.servers.free_port``).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.servers import REPO, ServerProcess

DOCUMENTED_PORTS = (8008, 8448, 8009, 8449)
#: The demo registers users, creates a room, federates and runs its MSC4259 scene first.
READY_TIMEOUT_S = 240.0
#: The curl recipe in docs/clients.md long-polls /sync for up to 3 × 30 s.
BLOCK_TIMEOUT_S = 150.0
STOP_TIMEOUT_S = 30.0

FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*(not-run|background)\s*:\s*(.*?)\s*-->$")
READY_URL = re.compile(r"^ready when (http://\S+) answers$")
READY_PATH = re.compile(r"^ready when (\S+) exists$")
OUTPUT = "# → "
#: Fence languages that hold commands, and the ones that hold other text.
SHELL_LANGS = {"sh"}
OTHER_LANGS = {"", "toml", "json"}
#: How an unlabelled block would betray that it holds commands.
COMMAND_START = re.compile(r"^\s*(\$ |curl |refserver |\.venv/|python3? |pip |pytest|just )")


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository
    line: int  # line of the opening fence (1-based)
    lang: str
    text: str
    marker: str | None  # "not-run", "background" or None (run)
    reason: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def parse_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    n = 0
    while n < len(lines):
        fence = FENCE.match(lines[n])
        if not fence:
            n += 1
            continue
        start = n
        n += 1
        body: list[str] = []
        while n < len(lines) and lines[n].rstrip() != "```":
            body.append(lines[n])
            n += 1
        assert n < len(lines), f"{path.name}:{start + 1}: unterminated code block"
        n += 1
        marker = MARKER.match(lines[start - 1].strip()) if start > 0 else None
        blocks.append(
            Block(
                doc=str(path.relative_to(REPO)),
                line=start + 1,
                lang=fence.group(1),
                text="\n".join(body) + "\n",
                marker=marker.group(1) if marker else None,
                reason=marker.group(2) if marker else "",
            )
        )
    return blocks


def shell_blocks(path: Path) -> list[Block]:
    return [b for b in parse_blocks(path) if b.lang in SHELL_LANGS]


def test_every_sh_block_is_run_or_says_why_not() -> None:
    """Every command block is run or carries a reason; no commands hide in other blocks."""
    problems = []
    for path in doc_files():
        for block in parse_blocks(path):
            if block.lang not in SHELL_LANGS | OTHER_LANGS:
                problems.append(f"{block.where}: unknown fence language {block.lang!r}")
            elif block.lang in OTHER_LANGS:
                if block.marker:
                    problems.append(f"{block.where}: marker on a {block.lang or 'plain'} block")
                commands = [ln for ln in block.text.splitlines() if COMMAND_START.match(ln)]
                if commands:
                    problems.append(f"{block.where}: commands outside an sh block: {commands}")
            elif block.marker == "not-run" and not block.reason:
                problems.append(f"{block.where}: not-run without a reason")
            elif block.marker == "background" and not (
                READY_URL.match(block.reason) or READY_PATH.match(block.reason)
            ):
                problems.append(
                    f"{block.where}: background marker must say 'ready when URL answers' or "
                    f"'ready when PATH exists', not {block.reason!r}"
                )
    assert not problems, "\n".join(problems)


def run_docs() -> list[str]:
    """The Markdown files with blocks to run. docs/ first: today's demo moves to other ports
    when its own port check (without SO_REUSEADDR) sees TIME-WAIT connections on them."""
    docs = [p for p in doc_files() if any(b.marker != "not-run" for b in shell_blocks(p))]
    return [str(p.relative_to(REPO)) for p in sorted(docs, key=lambda p: p.name == "README.md")]


def test_there_are_blocks_to_run() -> None:
    """The discovery itself works: the README's "Try it" and the clients.md recipe are run."""
    assert {"README.md", "docs/clients.md"} <= set(run_docs())


# -- running blocks -----------------------------------------------------------------------


def fresh_checkout(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory standing in for a fresh clone (``.venv`` = the venv running the tests)."""
    cwd = tmp_path / "checkout"
    cwd.mkdir()
    venv = Path(sys.prefix)
    (cwd / ".venv").symlink_to(venv, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return cwd, env


def port_in_use(port: int) -> bool:
    """True if something listens on 127.0.0.1:``port`` (TIME-WAIT leftovers do not count:
    servers bind with SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def loopback_ports(doc: str) -> list[int]:
    """The ports of the ``http://127.0.0.1:PORT`` URLs that the run blocks of ``doc`` use."""
    ports = {
        int(port)
        for block in shell_blocks(REPO / doc)
        if block.marker is None
        for port in re.findall(r"http://127\.0\.0\.1:(\d+)", block.text)
    }
    return sorted(ports)


def expected_line(pattern: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in pattern.split("…")))


def check_output(block: Block, stdout: str) -> None:
    """Each ``# → …`` line of ``block`` matches a line of ``stdout``, in order."""
    produced = [ln.strip() for ln in stdout.splitlines()]
    at = 0
    for raw in block.text.splitlines():
        if not raw.startswith(OUTPUT):
            continue
        want = raw[len(OUTPUT) :].strip()
        pattern = expected_line(want)
        for n in range(at, len(produced)):
            if pattern.fullmatch(produced[n]):
                at = n + 1
                break
        else:
            pytest.fail(
                f"{block.where}: expected an output line {want!r} (after line {at}), "
                f"but the block printed:\n{stdout}"
            )


@dataclass
class Background:
    block: Block
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self, cwd: Path) -> None:
        url = READY_URL.match(self.block.reason)
        path = READY_PATH.match(self.block.reason)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"{self.block.where}: the background block exited with "
                    f"{self.proc.returncode} before it was ready:\n{self.output()}"
                )
            if url:
                try:
                    httpx.get(url.group(1), timeout=1.0, trust_env=False)
                    return
                except httpx.TransportError:
                    pass
            elif path and (cwd / path.group(1)).exists():
                return
            time.sleep(0.1)
        pytest.fail(
            f"{self.block.where}: not {self.block.reason} after {READY_TIMEOUT_S:.0f} s:\n"
            f"{self.output()}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def backgrounds() -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for bg in reversed(started):
        bg.stop()


@pytest.mark.parametrize("doc", run_docs())
def test_doc_blocks_run_verbatim(doc: str, tmp_path: Path, backgrounds: list[Background]) -> None:
    blocks = shell_blocks(REPO / doc)
    needs_ports = any(b.marker == "background" for b in blocks) or loopback_ports(doc)
    busy = [port for port in DOCUMENTED_PORTS if needs_ports and port_in_use(port)]
    if busy:
        pytest.fail(
            f"port(s) {busy} on 127.0.0.1 are in use; the documented commands need "
            f"{list(DOCUMENTED_PORTS)} free (stop whatever listens there, e.g. a running "
            f"demo or `just run`, and run this test again)"
        )
    cwd, env = fresh_checkout(tmp_path)
    for n, block in enumerate(blocks):
        if block.marker == "not-run":
            continue
        if block.marker == "background":
            log = tmp_path / f"background{n}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    ["bash", "-c", block.text],
                    cwd=cwd,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            bg = Background(block, proc, log)
            backgrounds.append(bg)
            bg.wait_ready(cwd)
            missing = [port for port in loopback_ports(doc) if not port_in_use(port)]
            if missing:
                pytest.fail(
                    f"{block.where}: ready, but nothing listens on the documented port(s) "
                    f"{missing} that the blocks of {doc} use; its output:\n{bg.output()}"
                )
            continue
        try:
            result = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", block.text],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{block.where}: still running after {BLOCK_TIMEOUT_S:.0f} s: {exc}")
        context = "".join(
            f"\n--- background {bg.block.where}:\n{bg.output()}" for bg in backgrounds
        )
        assert result.returncode == 0, (
            f"{block.where}: exit {result.returncode}\nstdout:\n{result.stdout}\n"
            f"stderr:\n{result.stderr}{context}"
        )
        check_output(block, result.stdout)


# -- docs/clients.md: what is not implemented ------------------------------------------------

#: One endpoint per row of the table "What a full client (Element and others) would need".
UNIMPLEMENTED = [
    ("GET", "/_matrix/client/v3/user/{user}/account_data/m.direct"),
    ("POST", "/_matrix/client/v3/keys/upload"),
    ("PUT", "/_matrix/client/v3/sendToDevice/m.test/1"),
    ("GET", "/_matrix/client/v3/devices"),
    ("GET", "/_matrix/client/v1/media/config"),
    ("GET", "/_matrix/media/v3/config"),
    ("GET", "/_matrix/client/v3/presence/{user}/status"),
    ("PUT", "/_matrix/client/v3/rooms/{room}/typing/{user}"),
    ("POST", "/_matrix/client/v3/rooms/{room}/receipt/m.read/$event"),
    ("GET", "/_matrix/client/v3/pushers"),
    ("GET", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"),
    ("POST", "/_matrix/client/v3/user_directory/search"),
]


def test_the_areas_clients_md_lists_as_missing_answer_unrecognized(
    server: ServerProcess, username: str
) -> None:
    """docs/clients.md says these endpoints answer 404 M_UNRECOGNIZED and /sync has none of
    their sections: once one is implemented, this fails and the page needs updating."""
    user_id, token = server.register(username)
    headers = {"Authorization": f"Bearer {token}"}
    room = httpx.post(server.url("/v3/createRoom"), json={}, headers=headers).json()["room_id"]
    for method, template in UNIMPLEMENTED:
        path = template.format(user=quote(user_id), room=quote(room))
        r = httpx.request(method, f"{server.base_url}{path}", json={}, headers=headers)
        assert (r.status_code, r.json().get("errcode")) == (404, "M_UNRECOGNIZED"), (path, r.text)
    sync = httpx.get(server.url("/v3/sync"), headers=headers).json()
    assert sync["account_data"] == {"events": []} and sync["presence"] == {"events": []}
    assert not {"to_device", "device_lists", "device_one_time_keys_count"} & set(sync)
