"""Endpoint secrets at rest: payflow.store.sealing (AES-GCM under a scrypt key)."""

from __future__ import annotations

import base64

import pytest

from payflow.errors import ConfigError
from payflow.store.sealing import PREFIX, Sealer, SecretKeyError, derive_key, is_sealed, missing_key

KEY = "correct horse battery staple"


def test_seal_and_open() -> None:
    sealer = Sealer(KEY)
    sealed = sealer.seal("whsec_abc", "we_1")
    assert is_sealed(sealed) and sealed.startswith(PREFIX) and "whsec_abc" not in sealed
    raw = base64.b64decode(sealed[len(PREFIX):])
    assert len(raw) == 12 + len("whsec_abc") + 16  # nonce, ciphertext, tag
    assert sealer.open(sealed, "we_1") == "whsec_abc"
    assert Sealer(KEY).open(sealed, "we_1") == "whsec_abc"  # same passphrase, same key
    assert sealer.seal("whsec_abc", "we_1") != sealed  # a fresh nonce each time
    assert sealer.open(sealer.seal("", "we_1"), "we_1") == ""
    assert sealer.open(sealer.seal("sécret ✓", "we_1"), "we_1") == "sécret ✓"


def test_key_derivation_is_fixed_and_256_bits() -> None:
    assert derive_key(KEY) == derive_key(KEY) and len(derive_key(KEY)) == 32
    assert derive_key(KEY) != derive_key(KEY + "!")


def test_wrong_key_other_endpoint_or_altered_value_refuse() -> None:
    sealed = Sealer(KEY).seal("whsec_abc", "we_1")
    for sealer, value, context in ((Sealer("another passphrase!"), sealed, "we_1"),
                                   (Sealer(KEY), sealed, "we_2"),
                                   (Sealer(KEY), sealed[:-4] + "AAAA", "we_1"),
                                   (Sealer(KEY), PREFIX + "not base64!", "we_1"),
                                   (Sealer(KEY), PREFIX + "AAAA", "we_1")):
        with pytest.raises(SecretKeyError, match="secret_key is wrong") as info:
            sealer.open(value, context)
        assert "whsec_abc" not in str(info.value)
    with pytest.raises(SecretKeyError, match="not a sealed value"):
        Sealer(KEY).open("v9:abc", "we_1")


def test_errors_are_configuration_errors() -> None:
    error = missing_key("we_1")
    assert isinstance(error, ConfigError)
    assert "secret_key is missing" in str(error) and "we_1" in str(error)


def test_never_shows_the_key() -> None:
    assert KEY not in repr(Sealer(KEY))
    with pytest.raises(ValueError, match="empty"):
        Sealer("")
