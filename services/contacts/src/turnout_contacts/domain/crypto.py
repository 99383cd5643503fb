"""Contact values at rest: AES-256-GCM with a key ring, and a keyed blind index.

Ciphertext layout: key id (1 byte length + ascii) | 12-byte nonce | ciphertext+tag. The
key id lets old rows be read after a new key is put first, and lets `rotate-keys` find
the rows still under an old key. The member id is bound as associated data, so a value
copied onto another member's row does not decrypt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import uuid
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class KeyRingError(ValueError):
    pass


@dataclass(frozen=True)
class ContactCipher:
    keys: dict[str, AESGCM]
    active: str

    @classmethod
    def from_setting(cls, value: str) -> ContactCipher:
        keys: dict[str, AESGCM] = {}
        order: list[str] = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            key_id, sep, encoded = part.partition(":")
            if not sep or not key_id or len(key_id) > 32 or not key_id.isascii():
                raise KeyRingError("each encryption key must be written `id:base64key`")
            try:
                raw = base64.b64decode(encoded, validate=True)
            except ValueError:
                raise KeyRingError(f"encryption key {key_id!r} is not valid base64") from None
            if len(raw) != 32:
                raise KeyRingError(f"encryption key {key_id!r} must be 32 bytes (AES-256)")
            keys[key_id] = AESGCM(raw)
            order.append(key_id)
        if not order:
            raise KeyRingError("no encryption key configured")
        return cls(keys, order[0])

    def encrypt(self, member_id: uuid.UUID, plaintext: str | None) -> bytes | None:
        if plaintext is None:
            return None
        nonce = os.urandom(12)
        kid = self.active.encode()
        sealed = self.keys[self.active].encrypt(nonce, plaintext.encode(), member_id.bytes)
        return bytes([len(kid)]) + kid + nonce + sealed

    def decrypt(self, member_id: uuid.UUID, blob: bytes | None) -> str | None:
        if blob is None:
            return None
        kid_len = blob[0]
        kid = blob[1:1 + kid_len].decode()
        nonce = blob[1 + kid_len:13 + kid_len]
        try:
            key = self.keys[kid]
        except KeyError:
            raise KeyRingError(f"value encrypted under unknown key {kid!r}") from None
        return key.decrypt(nonce, blob[13 + kid_len:], member_id.bytes).decode()

    def key_id(self, blob: bytes) -> str:
        return blob[1:1 + blob[0]].decode()


@dataclass(frozen=True)
class BlindIndex:
    """HMAC tokens for exact lookups (a name typed into search) without the clear value."""

    key: bytes

    def token(self, text: str) -> str:
        normalised = " ".join(text.casefold().split())
        return hmac.new(self.key, normalised.encode(), hashlib.sha256).hexdigest()[:32]

    def digest(self, *parts: str | bool | None) -> bytes:
        """A fingerprint of a member's personal fields, to tell 'unchanged' on re-import
        without decrypting every row."""
        joined = "\x1f".join("" if p is None else str(p) for p in parts)
        return hmac.new(self.key, joined.encode(), hashlib.sha256).digest()
