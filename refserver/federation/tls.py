"""TLS for federation: a local development CA and instance certificates (trustme).

Server-server API §"TLS": federation is HTTPS and "the destination must present a
certificate from a known CA". On one laptop there is no public CA, so ``refserver init``
creates (or reuses, with ``--ca-dir``) a small CA and issues each instance a certificate for
``localhost``, ``127.0.0.1`` and ``::1``; every instance trusts that CA.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable
from pathlib import Path

import trustme

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
#: Names every dev certificate is valid for (loopback only).
LOOPBACK_IDENTITIES = ("localhost", "127.0.0.1", "::1")


def load_or_create_ca(ca_dir: Path) -> trustme.CA:
    """The CA in ``ca_dir``, created on first use; its key is written with mode 0600."""
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    if cert_path.exists() and key_path.exists():
        return trustme.CA.from_pem(cert_path.read_bytes(), key_path.read_bytes())
    ca_dir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="refserver development CA")
    cert_path.write_bytes(ca.cert_pem.bytes())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(ca.private_key_pem.bytes())
    return ca


def issue_certificate(
    ca: trustme.CA, cert_path: Path, key_path: Path, *, hostnames: Iterable[str] = ()
) -> None:
    """Write a server certificate chain and key for loopback plus ``hostnames``."""
    identities = list(dict.fromkeys([*LOOPBACK_IDENTITIES, *hostnames]))
    leaf = ca.issue_cert(*identities, common_name=identities[0])
    cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(leaf.private_key_pem.bytes())


def client_ssl_context(trusted_ca_files: Iterable[Path], *, verify: bool) -> ssl.SSLContext:
    """Outbound context: the system store plus ``trusted_ca_files``; or no verification."""
    context = ssl.create_default_context()
    for path in trusted_ca_files:
        context.load_verify_locations(cafile=str(path))
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
