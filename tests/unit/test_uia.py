"""User-interactive auth for /register (pure)."""

from __future__ import annotations

import pytest

from refserver.accounts.uia import UiaSessions
from refserver.errors import MatrixError


def test_no_auth_gets_flows_params_session() -> None:
    uia = UiaSessions()
    with pytest.raises(MatrixError) as info:
        uia.complete(None, now=0.0)
    body = info.value.to_json()
    assert info.value.status == 401
    assert body["flows"] == [{"stages": ["m.login.dummy"]}] and body["params"] == {}
    assert "errcode" not in body


def test_dummy_completes_with_or_without_session() -> None:
    uia = UiaSessions()
    uia.complete({"type": "m.login.dummy"}, now=0.0)
    with pytest.raises(MatrixError) as info:
        uia.complete(None, now=0.0)
    session = info.value.to_json()["session"]
    uia.complete({"type": "m.login.dummy", "session": session}, now=1.0)


def test_unknown_stage_keeps_session_and_adds_error() -> None:
    uia = UiaSessions()
    with pytest.raises(MatrixError) as first:
        uia.complete(None, now=0.0)
    session = first.value.to_json()["session"]
    with pytest.raises(MatrixError) as info:
        uia.complete({"type": "m.login.password", "session": session}, now=1.0)
    body = info.value.to_json()
    assert body["session"] == session and body["errcode"] == "M_UNKNOWN"
