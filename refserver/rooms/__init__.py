"""Rooms: building local events, persisting them with their state, and the client-facing
room operations (create, membership, messages, state).

``builder`` turns "alice wants to send X" into a signed, auth-checked PDU without touching
the database; ``service`` loads what the builder needs, persists the result in one
transaction and wakes /sync.
"""
