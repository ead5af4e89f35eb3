"""``refserver`` command line: init, run, register-user.

See the README's "Command line" section; ``refserver <command> --help`` lists every option.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from functools import partial
from pathlib import Path

import trio

from refserver.accounts.service import AccountService
from refserver.app.config import Config, ConfigError, load_config, parse_config
from refserver.app.config_render import render_config
from refserver.clock import Clock
from refserver.crypto.keys import (
    KeyFileError,
    generate_key_file,
    key_id,
    read_key_file,
    verify_key_base64,
)
from refserver.errors import MatrixError, ProtocolError
from refserver.federation.tls import CA_CERT, issue_certificate, load_or_create_ca
from refserver.storage.database import open_database

CONFIG_FILE = "refserver.toml"


def _config_path(args: argparse.Namespace) -> Path:
    if args.config:
        return Path(args.config)
    if args.data_dir:
        return Path(args.data_dir) / CONFIG_FILE
    raise SystemExit("error: give --data-dir DIR or --config FILE")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help=f"instance directory holding {CONFIG_FILE}")
    p.add_argument("--config", help="path of the config file (instead of --data-dir)")


def _prepare_directory(path: Path, flag: str) -> str | None:
    """Create ``path`` (and its parents); an error line naming the path, or None."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{path} is a file, not a directory: give {flag} a directory path"
    except NotADirectoryError:
        parent = next((p for p in path.parents if p.is_file()), path.parent)
        return f"cannot create {path}: {parent} is a file; give {flag} a path under a directory"
    except OSError as exc:
        return f"cannot create {path}: {exc.strerror}"
    return None


def cmd_init(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    if args.client_port == args.federation_port:
        print(
            f"error: --client-port and --federation-port are both {args.client_port};"
            " give each listener its own port",
            file=sys.stderr,
        )
        return 1
    config_path = data_dir / CONFIG_FILE
    key_path = data_dir / "signing.key"
    if args.keep_existing and key_path.exists() and config_path.exists():
        print(f"using existing instance in {data_dir}")
        return 0
    for existing in (key_path, config_path):
        if existing.exists():
            print(f"error: {existing} already exists; refusing to overwrite it", file=sys.stderr)
            return 1
    # An explicit port in the server name means peers connect straight to it (no
    # .well-known or SRV lookup): the natural choice for instances on one machine.
    server_name = args.server_name or f"localhost:{args.federation_port}"
    ca_dir = Path(args.ca_dir) if args.ca_dir else data_dir / "ca"
    text = render_config(
        server_name=server_name,
        bind=args.bind,
        client_port=args.client_port,
        federation_port=args.federation_port,
        trusted_ca_files=(str((ca_dir / CA_CERT).resolve()),),
    )
    try:
        parse_config(text, base_dir=data_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for directory, flag in ((data_dir, "--data-dir"), (ca_dir, "--ca-dir")):
        if (problem := _prepare_directory(directory, flag)) is not None:
            print(f"error: {problem}", file=sys.stderr)
            return 1
    try:
        key = generate_key_file(key_path)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ca = load_or_create_ca(ca_dir)
    hostname = server_name.rsplit(":", 1)[0] if not server_name.endswith("]") else server_name
    issue_certificate(
        ca, data_dir / "tls.crt", data_dir / "tls.key", hostnames=[hostname.strip("[]")]
    )
    config_path.write_text(text)
    print(f"wrote {config_path} (server_name {server_name})")
    print(f"wrote {key_path} ({key_id(key)})")
    print(f"wrote {data_dir / 'tls.crt'} (issued by the development CA in {ca_dir})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from refserver.app.main import PortInUse, StartupError, configure_logging, serve

    config_path = _config_path(args)
    config = load_config(config_path)
    configure_logging(config.server.log_level)
    try:
        trio.run(serve, config)
    except PortInUse as exc:
        print(
            f"error: port {exc.port} is in use (another refserver running?): stop it,"
            f" or change [{exc.section}] port in {config_path}",
            file=sys.stderr,
        )
        return 1
    except (KeyFileError, StartupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_register_user(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args))
    password = args.password
    if password is None:
        if not sys.stdin.isatty():
            print("error: give --password (no terminal to prompt on)", file=sys.stderr)
            return 1
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Confirm password: "):
            print("error: passwords do not match", file=sys.stderr)
            return 1
    return register_user(config, args.username, password)


def register_user(config: Config, username: str, password: str) -> int:
    async def create() -> str:
        async with open_database(config.resolve(config.server.database_path)) as db:
            accounts = AccountService(
                db,
                server_name=config.server.server_name,
                registration_enabled=True,
                clock=Clock(),
            )
            await accounts.check_available(username)
            return await accounts.create_user(accounts.check_username(username), password)

    try:
        user_id = trio.run(create)
    except (MatrixError, ProtocolError) as exc:
        print(f"error: {exc.errcode}: {exc.error}", file=sys.stderr)
        return 1
    print(f"created {user_id}")
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    """Move the current key to old_verify_keys (with expired_ts = now) and make a new one.

    Server-server API §"Publishing Keys": old keys stay valid for events signed before
    ``expired_ts``; requests are signed with the new key ID at once. A new key ID (never a
    new key under the old ID) keeps peers' caches correct.
    """
    config = load_config(_config_path(args))
    key_path = config.resolve(config.server.signing_key_path)
    old_path = config.resolve(config.federation.old_signing_keys_path)
    try:
        current = read_key_file(key_path)[0]
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    expired_ts = int(time.time() * 1000)
    with old_path.open("a") as f:
        # signedjson's read_old_signing_keys format: "<alg> <version> <expired_ts> <verify key>"
        f.write(f"{current.alg} {current.version} {expired_ts} {verify_key_base64(current)}\n")
    # The old private key is no longer needed: only its public half is published.
    key_path.unlink()
    new = generate_key_file(key_path)
    print(f"old key {key_id(current)} moved to {old_path} (expired_ts {expired_ts})")
    print(f"new signing key {key_id(new)}; restart the server to use it")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from refserver.app.demo import run_demo
    from refserver.app.demo_setup import DemoError

    data_dir = Path(args.data_dir)
    if (problem := _prepare_directory(data_dir, "--data-dir")) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    try:
        return trio.run(
            partial(
                run_demo,
                data_dir,
                exit_after_setup=args.exit_after_setup,
                any_ports=args.any_ports,
                timeout_s=args.timeout,
            )
        )
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refserver",
        description="A small Trio-based reference Matrix homeserver (MSC4259 profile EDUs).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create an instance directory: config file and signing key")
    p.add_argument("--data-dir", required=True, help="instance directory to create")
    p.add_argument("--server-name", help="server name (default localhost:<federation-port>)")
    p.add_argument("--client-port", type=int, default=8008, help="client API port (default 8008)")
    p.add_argument(
        "--federation-port", type=int, default=8448, help="federation port (default 8448)"
    )
    p.add_argument("--bind", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument(
        "--ca-dir",
        help="development CA directory, created if missing and shared by instances"
        " (default DIR/ca)",
    )
    p.add_argument(
        "--keep-existing",
        action="store_true",
        help="succeed without changes if DIR already holds a config and a key",
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", help="run the homeserver until SIGINT/SIGTERM")
    _add_config_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "rotate-key", help="retire the signing key (to old_verify_keys) and make a new one"
    )
    _add_config_args(p)
    p.set_defaults(func=cmd_rotate_key)

    p = sub.add_parser(
        "demo",
        help="run two federating instances (hs1, hs2), a narrated scene and the inspector page",
    )
    p.add_argument(
        "--data-dir", default="demo-data", help="where the instances live (default demo-data)"
    )
    p.add_argument("--exit-after-setup", action="store_true", help="stop once the scene has run")
    p.add_argument(
        "--any-ports",
        action="store_true",
        help="use free ports instead of 8008/8448, 8009/8449 (an existing DIR keeps its"
        " federation ports: they are part of the server names)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="how long to wait for each delivery before the demo fails (default 20)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("register-user", help="create a user, even when registration is off")
    _add_config_args(p)
    p.add_argument("username", help="localpart of the new user, e.g. alice")
    p.add_argument("--password", help="password (prompted for when omitted)")
    p.set_defaults(func=cmd_register_user)
    return parser


#: Exit status after Ctrl-C, as shells report a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


def _only_keyboard_interrupts(exc: BaseException) -> bool:
    """True for KeyboardInterrupt, also when Trio delivers it inside an ExceptionGroup."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_keyboard_interrupts(e) for e in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BaseException as exc:
        if not _only_keyboard_interrupts(exc):
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
