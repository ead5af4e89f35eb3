"""Login under attack, over real HTTP against a real server process (CS API "Login",
"Rate limiting"): failed logins are limited per account and per client address, and
concurrent password hashing is bounded, so a flood of wrong passwords neither brute-forces an
account nor grows memory by 64 MiB per request (argon2id)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.servers import REAL_PASSWORD_HASHING, ServerProcess

#: Peak resident memory allowed during 64 concurrent wrong-password logins. The server idles
#: at about 90 MB; two argon2id hashes at once add 128 MiB. Unbounded, the flood reached 2 GB.
MAX_PEAK_RSS_MB = 300
CONCURRENT_LOGINS = 64
ACCOUNT_FAILURES_PER_S = 0.17


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of its own: these tests use up the failed-login budget of 127.0.0.1."""
    # Real argon2 cost: the flood test measures memory under 64 MiB hashes.
    srv = ServerProcess(tmp_path / "hs", settings=dict(REAL_PASSWORD_HASHING))
    srv.init()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _login(srv: ServerProcess, user: str, password: str) -> httpx.Response:
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }
    return httpx.post(srv.url("/v3/login"), json=body, timeout=120.0)


def _assert_limited(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["errcode"] == "M_LIMIT_EXCEEDED"
    assert r.json()["retry_after_ms"] > 0
    assert int(r.headers["Retry-After"]) >= 1


def _peak_rss_mb(srv: ServerProcess) -> float:
    """The server process's peak resident set size (VmHWM), in MB."""
    assert srv.proc is not None
    for line in Path(f"/proc/{srv.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def test_brute_force_on_one_account_gets_429(fresh_server: ServerProcess) -> None:
    srv = fresh_server
    srv.register("victim", "right password")
    started = time.monotonic()
    statuses = [_login(srv, "victim", f"guess {n}").status_code for n in range(250)]
    elapsed = time.monotonic() - started
    # Synapse's default for failed attempts per account: burst 3, then 0.17 per second.
    assert statuses[:3] == [403, 403, 403], statuses[:10]
    assert set(statuses) == {403, 429}, sorted(set(statuses))
    allowed = 3 + int(elapsed * ACCOUNT_FAILURES_PER_S) + 1
    assert statuses.count(403) <= allowed, (
        f"{statuses.count(403)} wrong passwords checked in {elapsed:.1f} s; expected at most"
        f" {allowed} (burst 3 + 0.17/s), the rest 429"
    )
    limited = _login(srv, "victim", "guess again")
    _assert_limited(limited)
    # While the account is limited even the right password waits: guessing stays throttled.
    _assert_limited(_login(srv, "victim", "right password"))
    # Another account on the same address is not affected.
    srv.register("bystander", "pw")
    assert _login(srv, "bystander", "pw").status_code == 200


def test_failed_logins_across_accounts_are_limited_per_address(
    fresh_server: ServerProcess,
) -> None:
    srv = fresh_server
    statuses = [_login(srv, f"nobody{n}", "wrong").status_code for n in range(60)]
    # Default [rate_limits.login_failed_address]: burst 30, then 0.2 per second.
    assert statuses[:30] == [403] * 30, statuses
    assert 429 in statuses[30:], statuses
    _assert_limited(_login(srv, "nobody99", "wrong"))


def test_concurrent_wrong_password_logins_keep_memory_bounded(
    fresh_server: ServerProcess,
) -> None:
    srv = fresh_server
    before = _peak_rss_mb(srv)
    with ThreadPoolExecutor(max_workers=CONCURRENT_LOGINS) as pool:
        responses = list(
            pool.map(
                lambda n: _login(srv, f"flood{n}", "wrong"),
                range(CONCURRENT_LOGINS),
            )
        )
    statuses = sorted({r.status_code for r in responses})
    # Every attempt was answered: 403, or 429 once the address's failure budget was spent.
    assert set(statuses) <= {403, 429}, statuses
    peak = _peak_rss_mb(srv)
    print(f"peak RSS before the flood {before:.0f} MB, after {peak:.0f} MB")
    assert peak < MAX_PEAK_RSS_MB, (
        f"peak RSS {peak:.0f} MB after {CONCURRENT_LOGINS} concurrent logins"
        f" (before: {before:.0f} MB); expected below {MAX_PEAK_RSS_MB} MB"
    )
    # The server still hashes passwords (registration; this address's logins wait out the
    # failed-login limit, which 64 failures exceeded).
    srv.register("after", "pw")


def test_hashing_queue_overflow_gets_429(make_server: Callable[..., ServerProcess]) -> None:
    """With one hashing slot and no waiting room, concurrent registrations beyond the one
    being hashed are refused with 429 instead of queueing (each hash holds 64 MiB)."""
    srv = make_server(
        settings={
            ("limits", "max_concurrent_password_hashes"): "1",
            ("limits", "max_waiting_password_hashes"): "0",
        }
    )

    def register(n: int) -> httpx.Response:
        body = {"username": f"q{n}", "password": "pw", "auth": {"type": "m.login.dummy"}}
        return httpx.post(srv.url("/v3/register"), json=body, timeout=120.0)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(register, range(16)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, statuses
    _assert_limited(next(r for r in responses if r.status_code == 429))
