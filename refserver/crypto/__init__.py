"""Pure cryptography layer: canonical JSON, unpadded base64, signing JSON, server keys.

- :mod:`~refserver.crypto.canonical_json`: appendices §"Canonical JSON" (strict: no floats,
  integers within ±(2**53 - 1)) and §"Unpadded Base64".
- :mod:`~refserver.crypto.signing`: appendices §"Signing JSON" / §"Checking for a signature",
  on top of ``signedjson``.
- :mod:`~refserver.crypto.keys`: key IDs and loading/generating signing key files.

Nothing here performs network or database I/O or imports trio, httpx or sqlite3, and nothing
reads the clock or a random source except key generation, which is explicit. Keys and times
are passed in, so every function can be checked against the spec's test vectors.
"""
