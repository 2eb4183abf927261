"""Webhook endpoint secrets at rest: sealed with AES-256-GCM under ``[store] secret_key``.

The key is derived from the passphrase with scrypt (n=2**14, r=8, p=1) and the fixed salt
:data:`SALT` (fixed so that every daemon of a deployment derives the same key from the same
passphrase; the passphrase itself must carry the entropy: the configuration asks for at least
16 characters). Each secret gets a random 96-bit nonce; the endpoint id is the associated data,
so a sealed value copied to another endpoint does not open. A sealed value is
``v1:`` + base64(nonce + ciphertext + tag).
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from payflow.errors import ConfigError

PREFIX = "v1:"
SALT = b"payflow.store.sealing.v1"
NONCE_BYTES = 12


class SecretKeyError(ConfigError):
    """A sealed secret cannot be opened: ``[store] secret_key`` is missing or wrong."""


def derive_key(passphrase: str) -> bytes:
    """The 256-bit AES key of ``passphrase``."""
    return Scrypt(salt=SALT, length=32, n=2**14, r=8, p=1).derive(passphrase.encode("utf-8"))


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


class Sealer:
    """Seals and opens secrets with the key of one passphrase. Never logs a secret."""

    __slots__ = ("_aead",)

    def __init__(self, passphrase: str) -> None:
        if not passphrase:
            raise ValueError("an empty passphrase seals nothing")
        self._aead = AESGCM(derive_key(passphrase))

    def __repr__(self) -> str:
        return "Sealer(***)"

    def seal(self, secret: str, context: str) -> str:
        """``secret`` sealed, bound to ``context`` (the endpoint id)."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode("utf-8"), context.encode("utf-8"))
        return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str, context: str) -> str:
        """The secret of ``sealed``; :class:`SecretKeyError` when the key is not the one it was
        sealed with (or the value was altered, or belongs to another endpoint)."""
        if not is_sealed(sealed):
            raise SecretKeyError(f"a webhook endpoint secret of {context!r} is not a sealed "
                                 f"value of a known version (expected {PREFIX!r}…)")
        try:
            raw = base64.b64decode(sealed[len(PREFIX):], validate=True)
            if len(raw) <= NONCE_BYTES:
                raise ValueError("too short")
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                       context.encode("utf-8"))
        except (InvalidTag, ValueError, binascii.Error):
            raise SecretKeyError(
                f"[store] secret_key is wrong: the secrets of webhook endpoint {context!r} were "
                "sealed with another key (use the key they were stored with)") from None
        return plain.decode("utf-8")


def missing_key(context: str) -> SecretKeyError:
    """The error of a sealed secret read without a key."""
    return SecretKeyError(
        f"[store] secret_key is missing: the secrets of webhook endpoint {context!r} are "
        "encrypted in the store; set [store] secret_key (PAYFLOW_STORE_SECRET_KEY) to the key "
        "they were stored with")
