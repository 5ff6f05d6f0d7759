"""AES-GCM encryption of stored events: the default cipher (``CIPHER_KEY`` alone selects it).

eventsourcing 9.x implemented this module with pycryptodome; here it is the implementation
of :mod:`eventsourcing.cryptography` (the ``cryptography`` package, installed with
``pip install eventsourcing[crypto]``) with this module's own message for a failed
authentication check. Both write and read the same bytes: nonce(12) + tag(16) + ciphertext.
9.5.6 difference: AES from the cryptography package.
"""

from __future__ import annotations

from eventsourcing.cryptography import AESCipher as _CryptographyAESCipher

__all__ = ["AESCipher"]


class AESCipher(_CryptographyAESCipher):
    """AES-GCM cipher; see :class:`eventsourcing.cryptography.AESCipher`."""

    MAC_CHECK_FAILED = "Cipher text is damaged: MAC check failed"
