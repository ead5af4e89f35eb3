"""The inspector page in a real browser (headless Chromium driven by Playwright) against
a real ``refserver demo``: alice's ``m.tz`` changed through the page's form must show in the
timeline as an EDU from hs1 to hs2, in hs2's remote-profile cache panel, and as bob's /sync
delivering it (MSC4429); a burst is coalesced; a destination taken down catches up.

Chromium is Debian's package (``/usr/bin/chromium``; ``.ci/run`` installs it), never a
browser downloaded by Playwright. A screenshot of each test's page goes to
``test-artifacts/``.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from tests.servers import REPO

CHROMIUM = "/usr/bin/chromium"
#: Headless, and no connection attempts of Chromium's own (this machine has no network).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"
#: Waits in the page; the demo's own scene takes a few seconds before the fixture returns.
WAIT_MS = 15_000
SCENE_S = 90.0

expect.set_options(timeout=WAIT_MS)


@dataclass
class Demo:
    url: str
    proc: subprocess.Popen[str]
    output: list[str]


def _read_lines(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line.rstrip("\n"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``refserver demo`` running (scene done, servers up): its inspector URL is its first
    line of output."""
    data_dir = tmp_path_factory.mktemp("demo")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "refserver.app.cli",
            "demo",
            "--any-ports",
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc, lines), daemon=True).start()
    output: list[str] = []
    try:
        while not output or "Both servers keep running" not in output[-1]:
            try:
                output.append(lines.get(timeout=SCENE_S))
            except queue.Empty:
                raise AssertionError(
                    "the demo did not finish its scene; it printed:\n" + "\n".join(output)
                ) from None
        first = output[0]
        assert first.startswith("inspector: http://127.0.0.1:"), output
        yield Demo(first.split()[1], proc, output)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ensure_chromium() -> None:
    """Install Debian's ``chromium`` on first use when this process may (root, or sudo
    without a password), as the Synapse and Node fixtures install theirs; else fail saying how."""
    if Path(CHROMIUM).exists():
        return
    sudo_ok = bool(shutil.which("sudo")) and not subprocess.run(["sudo", "-n", "true"]).returncode
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"] if sudo_ok else None
    if prefix is not None and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for step in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            subprocess.run([*prefix, *step], env=env, check=False, capture_output=True)
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} missing and could not be installed here: `apt-get install chromium`"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ensure_chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, demo: Demo, request: pytest.FixtureRequest) -> Iterator[Page]:
    p = browser.new_page(viewport={"width": 1500, "height": 1000})
    p.set_default_timeout(WAIT_MS)
    p.goto(demo.url)
    expect(p.get_by_test_id("status")).to_have_text("live")
    try:
        yield p
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        p.screenshot(path=ARTIFACTS / f"{request.node.name}.png", full_page=True)
        p.close()


def set_field(page: Page, field: str, value: str) -> None:
    page.get_by_test_id("user").select_option(label="@alice:hs1")
    page.get_by_test_id("field").fill(field)
    page.get_by_test_id("value").fill(value)
    page.get_by_test_id("set").click()


def timeline(page: Page, kind: str, *texts: str) -> Locator:
    rows = page.locator(f'#timeline li[data-kind="{kind}"]')
    for text in texts:
        rows = rows.filter(has_text=text)
    return rows


def test_a_tz_change_through_the_form_shows_the_edu_the_cache_and_bobs_sync(
    page: Page,
) -> None:
    value = "Pacific/Auckland"
    set_field(page, "m.tz", value)

    expect(page.get_by_test_id("form-result")).to_contain_text("×1: 200")
    edu = f'"fields":{{"m.tz":"{value}"}}'
    # The transaction hs1 → hs2 carrying the EDU, acknowledged with 200.
    sent = timeline(page, "txn.acknowledged", "hs1 → hs2", "uk.tcpip.msc4259.profile", edu)
    expect(sent).to_have_count(1)
    expect(sent).to_contain_text("→ 200 in")
    cached = timeline(page, "profile.cached", "hs2: cache of @alice:hs1", f'"m.tz":"{value}"')
    expect(cached).to_have_count(1)
    # hs2's cache panel, from hs2's database.
    expect(page.get_by_test_id("cache-hs2")).to_contain_text(f'"{value}"')
    # bob's client (the demo keeps it syncing) got the users section (MSC4429).
    synced = timeline(page, "sync.users", "to @bob:hs2", f'"m.tz":"{value}"')
    expect(synced).to_have_count(1)


def test_a_burst_is_coalesced_and_a_downed_destination_catches_up(page: Page) -> None:
    page.get_by_test_id("field").fill("m.tz")
    page.get_by_test_id("burst").click()
    expect(page.get_by_test_id("form-result")).to_contain_text("×5: 200, 200, 200, 200, 200")
    # A change with no EDU about the field in the last min_interval_s goes at once (leading
    # edge); the ones after it wait out the debounce and travel together, as one field of one
    # EDU carrying only the last value (how the five split depends on timing: coalesced ≥ 1).
    last = timeline(page, "profile.edus", "hs1 → hs2", '"m.tz":"Europe/Lisbon"')
    expect(last).to_have_count(1)
    expect(last).to_contain_text("coalesced")

    hs1 = page.get_by_test_id("destinations-hs1")
    hs1.get_by_role("button", name="take down").click()
    expect(hs1).to_contain_text("switched DOWN")
    set_field(page, "m.tz", "America/Sao_Paulo")
    failed = timeline(page, "txn.failed", "hs1 → hs2", "America/Sao_Paulo")
    expect(failed.first).to_contain_text("switched down in the inspector")
    expect(hs1).to_contain_text("m.tz (1 change)")  # pending, durably, per destination
    expect(page.get_by_test_id("cache-hs2")).not_to_contain_text("America/Sao_Paulo")

    hs1.get_by_role("button", name="bring back").click()
    caught_up = timeline(page, "txn.acknowledged", "hs1 → hs2", "America/Sao_Paulo")
    expect(caught_up).to_have_count(1)
    expect(page.get_by_test_id("cache-hs2")).to_contain_text("America/Sao_Paulo")
    expect(hs1).to_contain_text("no profile changes pending")
