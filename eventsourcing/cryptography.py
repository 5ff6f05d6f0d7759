"""AES-GCM encryption of stored events, using the ``cryptography`` package.

Install with ``pip install eventsourcing[crypto]``. Enable it by setting ``CIPHER_KEY`` (a
base64 key of 16, 24 or 32 bytes, made by :meth:`AESCipher.create_key`) and optionally
``CIPHER_TOPIC=eventsourcing.cryptography:AESCipher``.

Wire format, shared with ``eventsourcing.cipher`` and with eventsourcing 9.x:
``nonce (12 bytes) + tag (16 bytes) + ciphertext``.
"""

from __future__ import annotations

import binascii
import os
from base64 import b64decode, b64encode

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError as e:  # pragma: no cover (the extra is installed in development)
    raise ImportError(
        f"{__name__} needs the 'cryptography' package, which is not installed ({e}): "
        "pip install eventsourcing[crypto]"
    ) from e

from eventsourcing.persistence import Cipher
from eventsourcing.utils import Environment

__all__ = ["AESCipher"]

_NONCE_SIZE = 12
_TAG_SIZE = 16


class AESCipher(Cipher):
    """Encrypts and authenticates stored state with AES-GCM and a key from the environment."""

    CIPHER_KEY = "CIPHER_KEY"
    KEY_SIZES = (16, 24, 32)
    MAC_CHECK_FAILED = "Invalid cipher tag"

    @staticmethod
    def create_key(num_bytes: int) -> str:
        """Return a new random key of ``num_bytes`` (16, 24 or 32) bytes, base64-encoded."""
        AESCipher.check_key_size(num_bytes)
        return b64encode(AESCipher.random_bytes(num_bytes)).decode("utf8")

    @staticmethod
    def check_key_size(num_bytes: int) -> None:
        """Raise ValueError unless ``num_bytes`` is a valid AES key size."""
        if num_bytes not in AESCipher.KEY_SIZES:
            raise ValueError(f"Invalid key size: {num_bytes} not in {AESCipher.KEY_SIZES}")

    @staticmethod
    def random_bytes(num_bytes: int) -> bytes:
        """Return ``num_bytes`` cryptographically random bytes."""
        return os.urandom(num_bytes)

    def __init__(self, environment: Environment):
        """Read the base64 key from ``CIPHER_KEY`` (``APPNAME_CIPHER_KEY`` wins)."""
        key = self._decode_key(environment.get(self.CIPHER_KEY))
        self._aesgcm = AESGCM(key)

    def _decode_key(self, encoded: str | None) -> bytes:
        if not encoded:
            raise OSError(
                f"'{self.CIPHER_KEY}' not in env: set it to a key made by "
                f"{type(self).__name__}.create_key(32)"
            )
        try:
            key = b64decode(encoded.encode("utf8"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValueError(
                f"The value of '{self.CIPHER_KEY}' ({len(encoded)} characters) is not valid "
                f"base64: set it to a key made by {type(self).__name__}.create_key(32)"
            ) from None
        try:
            self.check_key_size(len(key))
        except ValueError as e:
            raise ValueError(
                f"{e}: the value of '{self.CIPHER_KEY}' decodes to {len(key)} bytes; set it "
                f"to a key made by {type(self).__name__}.create_key(32)"
            ) from None
        return key

    def encrypt(self, plaintext: bytes) -> bytes:
        """Return nonce + tag + ciphertext of ``plaintext``, with a fresh random nonce."""
        nonce = os.urandom(_NONCE_SIZE)
        sealed = self._aesgcm.encrypt(nonce, plaintext, None)  # ciphertext + tag
        return nonce + sealed[-_TAG_SIZE:] + sealed[:-_TAG_SIZE]

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Return the plaintext; raise ValueError if the data is damaged or the key is wrong."""
        nonce = ciphertext[:_NONCE_SIZE]
        if len(nonce) != _NONCE_SIZE:
            raise ValueError("Damaged cipher text: invalid nonce length")
        tag = ciphertext[_NONCE_SIZE : _NONCE_SIZE + _TAG_SIZE]
        if len(tag) != _TAG_SIZE:
            raise ValueError("Damaged cipher text: invalid tag length")
        try:
            return self._aesgcm.decrypt(nonce, ciphertext[_NONCE_SIZE + _TAG_SIZE :] + tag, None)
        except InvalidTag:
            raise ValueError(self.MAC_CHECK_FAILED) from None
