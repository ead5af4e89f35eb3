"""Pure events layer: room versions, PDU format, hashing, redaction, event IDs, signing,
auth rules and state resolution.

Nothing in this package performs I/O or imports trio, httpx or sqlite3: time, keys and
state come in as arguments, so every rule can be tested directly against the spec.
"""
