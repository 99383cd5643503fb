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
from collections.abc import Iterable
from dataclasses import dataclass, field

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

    def encrypt_all(self, values: Iterable[tuple[bytes, str | None]]) -> list[bytes | None]:
        """`encrypt` for many values at once (an import's): each with its member id as
        16 bytes, and one draw from the random source for all the nonces rather than a
        system call each (which costs about as much as encrypting a short value)."""
        values = list(values)
        nonces = os.urandom(12 * len(values))
        kid = self.active.encode()
        prefix = bytes([len(kid)]) + kid
        seal = self.keys[self.active].encrypt
        return [None if plaintext is None else
                prefix + nonces[at:at + 12] + seal(nonces[at:at + 12], plaintext.encode(),
                                                   member_id)
                for at, (member_id, plaintext) in zip(range(0, 12 * len(values), 12), values,
                                                      strict=True)]

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
    # HMAC-SHA256 with the key already absorbed; each message starts from a copy of it.
    # Keying an HMAC costs more than hashing a short message, and an import computes a
    # few per row.
    _keyed: hmac.HMAC = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keyed", hmac.new(self.key, digestmod=hashlib.sha256))

    def _mac(self, message: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(message)
        return mac.digest()

    def token(self, text: str) -> str:
        normalised = " ".join(text.casefold().split())
        return self._mac(normalised.encode()).hex()[:32]

    def digest(self, *parts: str | bool | None) -> bytes:
        """A fingerprint of a member's personal fields, to tell 'unchanged' on re-import
        without decrypting every row."""
        joined = "\x1f".join(["" if p is None else str(p) for p in parts])
        return self._mac(joined.encode())

    def __reduce__(self) -> tuple[type[BlindIndex], tuple[bytes]]:
        # Pickled (for worker processes) as its key; the keyed HMAC is rebuilt.
        return BlindIndex, (self.key,)
