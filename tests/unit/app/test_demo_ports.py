"""The demo's free-port check: a port whose old connections sit in TIME-WAIT is free.

The server's listener binds with SO_REUSEADDR (hypercorn), so such a port can be listened
on at once; the check must agree, or a second demo right after the first leaves the
documented ports.
"""

from __future__ import annotations

import socket

import pytest

from refserver.app.demo_setup import port_free


def _port_with_a_connection_in_time_wait() -> int:
    """A port an earlier server listened on (with SO_REUSEADDR, as hypercorn does) and
    closed a connection on first."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        # The listening side closes first, so its end (on `port`) goes to TIME-WAIT.
        accepted.close()
        assert client.recv(1) == b""
        client.close()
    return port


def test_a_port_with_a_connection_in_time_wait_is_free() -> None:
    port = _port_with_a_connection_in_time_wait()
    # Without SO_REUSEADDR the lingering connection blocks a bind: the state under test.
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))
    assert port_free(port)


def test_a_port_someone_listens_on_is_not_free() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not port_free(int(listener.getsockname()[1]))
