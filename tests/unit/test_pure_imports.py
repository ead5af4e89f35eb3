"""PURE modules import no runtime, HTTP or database library (README, "Layout").

Each module is imported in a fresh interpreter so that nothing imported by other tests (or by
pytest plugins such as pytest-trio) can hide a forbidden import.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import refserver.events

FORBIDDEN = ("trio", "httpx", "sqlite3", "quart", "quart_trio", "hypercorn")

PURE_MODULES = sorted(
    {
        "refserver.types",
        "refserver.ids",
        "refserver.errors",
        "refserver.requester",
        "refserver.crypto.canonical_json",
        "refserver.crypto.signing",
        "refserver.events",
        "refserver.sync.filter",
        "refserver.sync.event_fields",
        "refserver.client.pushrules_default",
        "refserver.federation.xmatrix",
        "refserver.federation.backoff",
        "refserver.federation.transaction",
        "refserver.profiles.edu_hold",
        *(
            f"refserver.events.{info.name}"
            for info in pkgutil.iter_modules(refserver.events.__path__)
        ),
    }
)

_CHECK = """
import importlib, sys
importlib.import_module(sys.argv[1])
forbidden = set(sys.argv[2:])
print(sorted(m for m in sys.modules if m.split(".")[0] in forbidden))
"""


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io_library(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CHECK, module, *FORBIDDEN],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{module} imports {result.stdout.strip()}"
