"""Encrypting Temporal payloads: with PAYLOAD_ENCRYPTION_KEY set, every payload the API and the
workers send to Temporal (run inputs, activity arguments and results, signals, queries, summaries,
failures' messages) is sealed with AES-256-GCM, so Temporal and whoever reads its histories see no
phone, name or metadata. Payloads written before a key was set pass through unchanged, and the keys
in PAYLOAD_DECRYPTION_KEYS open what they sealed without sealing anything, so a key can be brought
in, rotated or retired while runs are in flight (docs/DEPLOY.md says in which steps).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
KEY_BYTES = 32
NONCE_BYTES = 12


class PayloadKeyError(ValueError):
    """A payload this codec cannot open: sealed with a key it does not hold, or altered."""


def new_key() -> str:
    """A new random key, in the form PAYLOAD_ENCRYPTION_KEY takes (base64 of 32 bytes)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def key_bytes(text: str) -> bytes:
    """The 32 bytes a key's text (standard or URL-safe base64) stands for; ValueError otherwise,
    without the text itself."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not base64 (make one with `outbound codec key`)") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"is {len(key)} bytes, not {KEY_BYTES} (make one with `outbound codec key`)")
    return key


def key_id(key: bytes) -> str:
    """A name for a key that says nothing about it: the start of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:16]


class EncryptionCodec(PayloadCodec):
    """Opens what any of the keys sealed; seals payloads with the first key if `seal`, and leaves
    them as they are otherwise (a process that can read sealed payloads before any process writes
    them)."""

    def __init__(self, keys: Iterable[bytes], seal: bool = True) -> None:
        ciphers = [(key_id(key), AESGCM(key)) for key in keys]
        if not ciphers:
            raise ValueError("an encryption codec needs a key")
        self._sealing = ciphers[0] if seal else None
        self._opening = dict(ciphers)

    @property
    def key_ids(self) -> list[str]:
        """The ids of the keys this codec opens, the sealing key's first."""
        return list(self._opening)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.seal(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.open(payload) for payload in payloads]

    def seal(self, payload: Payload) -> Payload:
        if self._sealing is None:
            return payload
        name, cipher = self._sealing
        nonce = os.urandom(NONCE_BYTES)
        sealed = cipher.encrypt(nonce, payload.SerializeToString(), name.encode())
        return Payload(metadata={"encoding": ENCODING, KEY_ID: name.encode()}, data=nonce + sealed)

    def open(self, payload: Payload) -> Payload:
        """The payload inside a sealed one; any other payload as it is (written before a key was set)."""
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        name = payload.metadata.get(KEY_ID, b"").decode("ascii", "replace")
        cipher = self._opening.get(name)
        if cipher is None:
            raise PayloadKeyError(
                f"a payload was sealed with key {name!r}, which is neither PAYLOAD_ENCRYPTION_KEY nor "
                f"one of PAYLOAD_DECRYPTION_KEYS (this process holds {', '.join(self._opening)})"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, sealed, name.encode())
        except InvalidTag:
            raise PayloadKeyError(f"a payload sealed with key {name!r} has been altered") from None
        opened = Payload()
        try:
            opened.ParseFromString(plain)
        except DecodeError:
            raise PayloadKeyError(f"a payload sealed with key {name!r} holds no payload") from None
        return opened
