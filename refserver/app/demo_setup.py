"""``refserver demo`` set-up: which ports, and the two instance directories.

The documented ports are 8008/8448 (hs1) and 8009/8449 (hs2). Without ``--any-ports`` the
demo uses exactly those or stops, naming the busy port. A server name includes its
federation port (``localhost:8448``), so an existing instance keeps its federation port;
``--any-ports`` can move only its client port, and only for one run. Ports chosen for new
instances are saved in their config and printed, never silently.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from refserver.app.config import Config, ConfigError, load_config, parse_config
from refserver.app.config_render import render_config
from refserver.crypto.keys import generate_key_file
from refserver.federation.tls import CA_CERT, issue_certificate, load_or_create_ca

#: The documented ports: hs1 client 8008 / federation 8448, hs2 client 8009 / federation 8449.
DEFAULT_PORTS = ((8008, 8448), (8009, 8449))
DEFAULT_DATA_DIR = Path("demo-data")


class DemoError(Exception):
    """The demo cannot go on; the message says what was expected, what was seen, and why."""


def port_free(port: int, bind: str = "127.0.0.1") -> bool:
    """Whether a listener could bind ``port`` now.

    Binds with SO_REUSEADDR as the server's own listener does (hypercorn), so connections
    lingering in TIME-WAIT after an earlier run do not count as "in use".
    """
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind, port))
        except OSError:
            return False
    return True


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def _demo_command(data_dir: Path) -> str:
    where = "" if data_dir == DEFAULT_DATA_DIR else f" --data-dir {data_dir}"
    return f"refserver demo --any-ports{where}"


def busy_port_error(port: int, data_dir: Path, *, movable: bool) -> DemoError:
    """One line: which port, and what to do. ``movable``: ``--any-ports`` can replace it
    (a client port, or any port of an instance not created yet)."""
    if movable:
        fix = f"run `{_demo_command(data_dir)}`"
    else:
        fix = (
            f"run `refserver demo --any-ports --data-dir {data_dir}-2` (a server name holds"
            f" its federation port, so the instances in {data_dir} cannot move)"
        )
    return DemoError(f"port {port} is in use (another demo running?): stop it, or {fix}")


def plan_ports(data_dir: Path, *, any_ports: bool) -> tuple[list[tuple[int, int]], list[str]]:
    """(client, federation) ports for hs1 and hs2, and lines telling the user what was chosen.

    Without ``--any-ports``: the documented ports, all free, or a :class:`DemoError`
    naming the busy one. With it: an existing instance keeps its federation port (its
    server name) and its client port when free; new instances get free ports, saved in
    their config (and said so).
    """
    existing = [_existing_ports(data_dir / f"hs{n + 1}") for n in range(len(DEFAULT_PORTS))]
    if not any_ports:
        for n, (ports, default) in enumerate(zip(existing, DEFAULT_PORTS, strict=True)):
            if ports is not None and ports != default:
                raise DemoError(
                    f"{data_dir / f'hs{n + 1}'} uses ports {ports[0]}/{ports[1]}, not the"
                    f" documented {default[0]}/{default[1]}: run `{_demo_command(data_dir)}` to"
                    f" reuse it, or remove {data_dir} to start afresh"
                )
        busy = [
            (port, existing[n] is None or port == client)
            for n, (client, federation) in enumerate(DEFAULT_PORTS)
            for port in (client, federation)
            if not port_free(port)
        ]
        if busy:
            # Name the first; advise what works for all of them.
            movable = all(can_move for _, can_move in busy)
            raise busy_port_error(busy[0][0], data_dir, movable=movable)
        return list(DEFAULT_PORTS), []
    taken: set[int] = set()
    plan: list[tuple[int, int]] = []
    notes: list[str] = []
    for n, ports in enumerate(existing):
        name = f"hs{n + 1}"
        if ports is None:
            client, federation = _free_port(taken), _free_port(taken)
            notes.append(
                f"{name}: --any-ports chose client port {client} and federation port"
                f" {federation}, saved in {data_dir / name / 'refserver.toml'}"
            )
        else:
            client, federation = ports
            if not port_free(federation):
                raise busy_port_error(federation, data_dir, movable=False)
            if not port_free(client):
                client = _free_port(taken)
                notes.append(
                    f"{name}: client port {ports[0]} is in use; using {client} for this run"
                    " (the config file keeps its own)"
                )
        taken |= {client, federation}
        plan.append((client, federation))
    return plan, notes


def _existing_ports(instance_dir: Path) -> tuple[int, int] | None:
    config_path = instance_dir / "refserver.toml"
    if not config_path.exists():
        return None
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise DemoError(f"{config_path}: {exc}") from None
    return config.client.port, config.federation.port


def prepare_instance(
    data_dir: Path, ca_dir: Path, client_port: int, federation_port: int
) -> Config:
    """Create (or reuse) an instance directory, as ``refserver init`` would.

    An existing instance keeps its config file; ``client_port`` then applies to this run
    only.
    """
    config_path = data_dir / "refserver.toml"
    if not config_path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        server_name = f"localhost:{federation_port}"
        text = render_config(
            server_name=server_name,
            client_port=client_port,
            federation_port=federation_port,
            trusted_ca_files=(str((ca_dir / CA_CERT).resolve()),),
        )
        parse_config(text, base_dir=data_dir)
        if not (data_dir / "signing.key").exists():
            generate_key_file(data_dir / "signing.key")
        issue_certificate(load_or_create_ca(ca_dir), data_dir / "tls.crt", data_dir / "tls.key")
        config_path.write_text(text)
    config = load_config(config_path)
    # The demo reads hs2's /metrics: a metrics listener on a free loopback port, this run only.
    metrics = dataclasses.replace(config.metrics, bind="127.0.0.1", port=free_loopback_port())
    return dataclasses.replace(
        config, client=dataclasses.replace(config.client, port=client_port), metrics=metrics
    )


def free_loopback_port() -> int:
    """A loopback port free now (chosen by the kernel)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
