"""refserver.crypto.signing against appendices §"Signing JSON" and its test vectors."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from signedjson.key import get_verify_key

from refserver.crypto.signing import (
    SignatureError,
    get_signature,
    key_id_of,
    sign_json,
    signature_key_ids,
    verify_json_for_entity,
    verify_signed_json,
)
from tests.unit.events.test_deep_values import deep_value
from tests.unit.spec_vectors import (
    load_vectors,
    other_signing_key,
    spec_signing_key,
    spec_verify_key,
)

VECTORS = load_vectors("appendix_signing")


def test_spec_seed_gives_the_derived_public_key() -> None:
    assert bytes(get_verify_key(spec_signing_key())) == bytes(spec_verify_key())
    assert key_id_of(spec_signing_key()) == "ed25519:1"


@pytest.mark.parametrize("vector", VECTORS["json_signing"], ids=lambda v: v["name"])
def test_sign_json_reproduces_the_spec_vectors(vector: dict[str, Any]) -> None:
    original = copy.deepcopy(vector["input"])
    signed = sign_json(vector["input"], "domain", spec_signing_key())
    assert signed == vector["expected"]
    assert vector["input"] == original, "sign_json must not modify its argument"


@pytest.mark.parametrize("vector", VECTORS["json_signing"], ids=lambda v: v["name"])
def test_spec_vectors_verify(vector: dict[str, Any]) -> None:
    verify_signed_json(vector["expected"], "domain", spec_verify_key())
    assert verify_json_for_entity(
        vector["expected"], "domain", {"ed25519:1": spec_verify_key()}
    ) == ["ed25519:1"]


def test_signing_keeps_existing_signatures_and_unsigned() -> None:
    obj = {"a": 1, "unsigned": {"age": 5}, "signatures": {"other": {"ed25519:x": "abc"}}}
    signed = sign_json(obj, "domain", spec_signing_key())
    assert signed["unsigned"] == {"age": 5}
    assert signed["signatures"]["other"] == {"ed25519:x": "abc"}
    # `unsigned` and `signatures` are not covered: same signature as for {"a": 1}.
    assert get_signature(signed, "domain", "ed25519:1") == get_signature(
        sign_json({"a": 1}, "domain", spec_signing_key()), "domain", "ed25519:1"
    )


def test_verification_fails_for_tampered_json() -> None:
    signed = sign_json({"one": 1, "two": "Two"}, "domain", spec_signing_key())
    signed["two"] = "Three"
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signed_json(signed, "domain", spec_verify_key())


def test_verification_fails_with_the_wrong_key() -> None:
    signed = sign_json({"one": 1}, "domain", other_signing_key())
    with pytest.raises(SignatureError):
        verify_signed_json(signed, "domain", spec_verify_key())


def test_verification_fails_without_a_signature_from_the_entity() -> None:
    signed = sign_json({"one": 1}, "elsewhere", spec_signing_key())
    with pytest.raises(SignatureError, match="no signature from domain"):
        verify_signed_json(signed, "domain", spec_verify_key())
    with pytest.raises(SignatureError, match="no supported signature"):
        verify_json_for_entity(signed, "domain", {"ed25519:1": spec_verify_key()})


@pytest.mark.parametrize("bad_signature", ["!!!not base64", "Zm9v", ""])
def test_verification_fails_for_malformed_signatures(bad_signature: str) -> None:
    obj = {"one": 1, "signatures": {"domain": {"ed25519:1": bad_signature}}}
    with pytest.raises(SignatureError):
        verify_signed_json(obj, "domain", spec_verify_key())


def test_padded_signatures_are_accepted() -> None:
    signed = sign_json({"one": 1}, "domain", spec_signing_key())
    signed["signatures"]["domain"]["ed25519:1"] += "=="
    verify_signed_json(signed, "domain", spec_verify_key())


def test_unknown_algorithms_are_ignored_when_checking() -> None:
    signed = sign_json({"one": 1}, "domain", spec_signing_key())
    signed["signatures"]["domain"]["curve25519:1"] = "whatever"
    assert signature_key_ids(signed, "domain") == ["ed25519:1"]
    assert verify_json_for_entity(signed, "domain", {"ed25519:1": spec_verify_key()}) == [
        "ed25519:1"
    ]


def test_only_unknown_algorithms_fails() -> None:
    obj = {"signatures": {"domain": {"curve25519:1": "abc"}}}
    with pytest.raises(SignatureError, match="no supported signature"):
        verify_json_for_entity(obj, "domain", {"ed25519:1": spec_verify_key()})


def test_no_known_verify_key_fails() -> None:
    signed = sign_json({"one": 1}, "domain", spec_signing_key())
    with pytest.raises(SignatureError, match="no known verify key"):
        verify_json_for_entity(signed, "domain", {"ed25519:2": spec_verify_key()})


def test_every_known_key_must_verify() -> None:
    signed = sign_json({"one": 1}, "domain", spec_signing_key())
    signed = sign_json(signed, "domain", other_signing_key("2"))
    keys = {"ed25519:1": spec_verify_key(), "ed25519:2": get_verify_key(other_signing_key("2"))}
    assert verify_json_for_entity(signed, "domain", keys) == ["ed25519:1", "ed25519:2"]
    signed["signatures"]["domain"]["ed25519:2"] = signed["signatures"]["domain"]["ed25519:1"]
    with pytest.raises(SignatureError):
        verify_json_for_entity(signed, "domain", keys)


@pytest.mark.parametrize(
    "obj",
    [{}, {"signatures": []}, {"signatures": {"domain": "x"}}, {"signatures": {"domain": {}}}],
)
def test_get_signature_returns_none_when_absent(obj: dict[str, Any]) -> None:
    assert get_signature(obj, "domain", "ed25519:1") is None
    assert signature_key_ids(obj, "domain") == []


def test_signing_a_very_deep_value_does_not_recurse() -> None:
    """A 900-level value (1,800 nested arrays and objects) once raised RecursionError when a
    transaction holding it was signed, killing the sender; it is signed and verifies."""
    obj = {"content": deep_value(900), "unsigned": {"age": 1}}
    signed = sign_json(obj, "domain", spec_signing_key())
    assert signed["unsigned"] == {"age": 1} and "signatures" not in obj
    verify_signed_json(signed, "domain", spec_verify_key())


def test_signing_keeps_other_signatures_and_leaves_the_input_alone() -> None:
    obj: dict[str, Any] = {"a": 1, "signatures": {"other": {"ed25519:x": "c2ln"}}}
    original = copy.deepcopy(obj)
    signed = sign_json(obj, "domain", spec_signing_key())
    assert obj == original
    assert signed["signatures"]["other"] == {"ed25519:x": "c2ln"}
    again = sign_json(signed, "domain", other_signing_key())
    assert set(again["signatures"]["domain"]) == {
        key_id_of(spec_signing_key()),
        key_id_of(other_signing_key()),
    }
    assert set(signed["signatures"]["domain"]) == {key_id_of(spec_signing_key())}
