"""Compression of stored events with :mod:`zlib` (``COMPRESSOR_TOPIC``)."""

from __future__ import annotations

import zlib

from eventsourcing.persistence import Compressor

__all__ = ["ZlibCompressor"]


class ZlibCompressor(Compressor):
    """Compresses stored state with zlib's default level."""

    def compress(self, data: bytes) -> bytes:
        """Return ``data`` compressed with zlib."""
        return zlib.compress(data)

    def decompress(self, data: bytes) -> bytes:
        """Return the bytes that :meth:`compress` turned into ``data``."""
        return zlib.decompress(data)
