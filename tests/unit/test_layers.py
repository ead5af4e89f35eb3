"""Imports only go down the layers, and never round in a cycle (README, "Layout";
docs/architecture.md).

Layers, bottom to top:

- L0 pure basics: ``types``, ``ids``, ``errors``, ``streams``, ``requester``, ``settings``
  (the configuration schema).
- L1 pure protocol: ``crypto/``, ``events/`` and the other pure rule modules listed below.
- L2 infrastructure: ``clock``, ``notifier``, ``metrics``, ``ratelimit``, ``storage/`` (all
  SQL), the federation HTTP client, resolver and TLS.
- L3 services, in package order ``accounts < profiles < rooms < sync`` and ``federation``
  (federation may use rooms, profiles and accounts; rooms never uses federation: it declares
  the ``RemoteMembership`` Protocol that federation implements).
- L4 HTTP edge: ``web``, ``client/``, ``federation/routes/``.
- L5 ``app/``.

The imports are read with :mod:`ast` (every ``import`` statement, including those under
``if TYPE_CHECKING:`` and inside functions), so the rule holds for the source, not for what one
interpreter happened to load.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import refserver

ROOT = Path(refserver.__file__).parent

#: Pure modules (L0, L1): they import no runtime, HTTP or database library.
L0 = {"types", "ids", "errors", "streams", "requester", "settings"}
L1_PACKAGES = ("crypto", "events")
L1 = {
    "profiles.fields",
    "profiles.edus",
    "profiles.edu_hold",
    "profiles.edu_limits",
    "federation.xmatrix",
    "federation.backoff",
    "federation.transaction",
    "sync.filter",
    "sync.event_fields",
    "client.pushrules_default",
}
L2 = {
    "clock",
    "observe",
    "notifier",
    "metrics",
    "ratelimit",
    "federation.client",
    "federation.connection",
    "federation.resolver",
    "federation.tls",
}
#: The HTTP edge: routes, and the request authenticators that read Quart requests.
L4 = {"federation.auth"}
#: Service packages and their rank: a service may import its own package or one of lower rank.
#: Equal ranks in different packages may not import each other.
SERVICE_RANK = {"accounts": 0, "profiles": 1, "rooms": 2, "sync": 3, "federation": 3}

FORBIDDEN_IN_PURE = ("trio", "httpx", "sqlite3", "quart", "quart_trio", "hypercorn")


@dataclass(frozen=True)
class Place:
    layer: int
    package: str  # the service package (L3) or the first path component


def place(module: str) -> Place:
    """The layer of ``module`` (dotted, without the ``refserver.`` prefix)."""
    top = module.split(".")[0]
    if module in L0:
        return Place(0, top)
    if top in L1_PACKAGES or module in L1:
        return Place(1, top)
    if top == "storage" or module in L2:
        return Place(2, top)
    if top in ("web", "client") or module in L4 or module.startswith("federation.routes"):
        return Place(4, top)
    if top == "app":
        return Place(5, top)
    if top in SERVICE_RANK:
        return Place(3, top)
    raise AssertionError(f"refserver.{module} has no layer: add it to tests/unit/test_layers.py")


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts != ("__main__",):
            yield ".".join(parts), path


MODULES = dict(modules())


def imports_of(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """Every imported module name (absolute, dotted) with its line number."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = "refserver." + package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            # ``from refserver.storage import events`` imports a module, not a name.
            for alias in node.names:
                sub = f"{name}.{alias.name}"
                if sub.startswith("refserver.") and sub.removeprefix("refserver.") in MODULES:
                    yield sub, node.lineno
                    break
            else:
                yield name, node.lineno


def internal_edges() -> Iterator[tuple[str, str, int]]:
    for module, path in MODULES.items():
        for name, line in imports_of(module, path):
            if name == "refserver" or not name.startswith("refserver."):
                continue
            target = name.removeprefix("refserver.")
            while target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            if target != module:
                yield module, target, line


def allowed(src: str, dst: str) -> bool:
    a, b = place(src), place(dst)
    if b.layer != a.layer:
        return b.layer < a.layer
    if a.layer == 3 and a.package != b.package:
        return SERVICE_RANK[b.package] < SERVICE_RANK[a.package]
    return True


def layer_violations() -> list[str]:
    return sorted(
        f"refserver.{src} (L{place(src).layer}) imports refserver.{dst} (L{place(dst).layer}),"
        f" line {line}"
        for src, dst, line in internal_edges()
        if not allowed(src, dst)
    )


def module_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for src, dst, _ in internal_edges():
        graph[src].add(dst)
    return graph


def package_graph() -> dict[str, set[str]]:
    """The same imports between top-level packages (``storage``, ``profiles``, …; a
    top-level module such as ``clock`` is its own package)."""
    graph: dict[str, set[str]] = {m.partition(".")[0]: set() for m in MODULES}
    for src, dst, _ in internal_edges():
        a, b = src.partition(".")[0], dst.partition(".")[0]
        if a != b:
            graph[a].add(b)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        place(module)


def test_imports_only_go_down_the_layers() -> None:
    violations = layer_violations()
    assert not violations, "imports against the layer order:\n" + "\n".join(violations)


def test_no_import_cycles() -> None:
    found = cycles(module_graph())
    assert not found, "import cycles:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_no_import_cycles_between_packages() -> None:
    """Also per package: a pure module inside a service package (``profiles/edus.py``) does
    not make it right for ``storage/`` to import ``profiles/``; the folder tree shows the
    architecture only if the packages themselves form no loop."""
    found = cycles(package_graph())
    assert not found, "package cycles:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_pure_modules_import_no_io_library() -> None:
    bad = []
    for module, path in MODULES.items():
        if place(module).layer > 1:
            continue
        for name, line in imports_of(module, path):
            if name.split(".")[0] in FORBIDDEN_IN_PURE:
                bad.append(f"refserver.{module} imports {name}, line {line}")
    assert not bad, "\n".join(bad)


def test_only_storage_runs_sql() -> None:
    """All SQL lives in ``storage/``: nothing else calls ``.execute``/``.executemany``."""
    bad = []
    for module, path in MODULES.items():
        if place(module).package == "storage":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("execute", "executemany", "executescript")
            ):
                bad.append(f"refserver.{module}, line {node.lineno}")
    assert not bad, "SQL outside storage/:\n" + "\n".join(bad)


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_check_catches_a_cycle() -> None:
    """The rule itself: an upward import or a peer service import is refused."""
    assert not allowed("storage.rooms", "rooms.service")
    assert not allowed("rooms.membership", "federation.membership")
    assert not allowed("profiles.service", "rooms.service")
    assert not allowed("events.model", "storage.events")
    assert not allowed("client.rooms", "app.config")
    assert allowed("federation.membership", "rooms.membership")
    assert allowed("rooms.service", "storage.room_state")
