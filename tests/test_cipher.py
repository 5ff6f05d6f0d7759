"""AES-GCM ciphers (eventsourcing.cipher, eventsourcing.cryptography) and the zlib compressor."""

from __future__ import annotations

import subprocess
import sys
import zlib
from base64 import b64encode
from typing import Any, cast
from uuid import UUID, uuid4

import pytest

from eventsourcing import cipher as cipher_module
from eventsourcing import cryptography as cryptography_module
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import (
    Cipher,
    Compressor,
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    MapperDeserialisationError,
    UUIDAsHex,
)
from eventsourcing.utils import Environment

CIPHER_CLASSES = [cipher_module.AESCipher, cryptography_module.AESCipher]
MAC_MESSAGES = {
    cipher_module.AESCipher: "Cipher text is damaged: MAC check failed",
    cryptography_module.AESCipher: "Invalid cipher tag",
}
AESCipherType = type[cryptography_module.AESCipher]


def make_cipher(cls: AESCipherType, key: str | None = None) -> cryptography_module.AESCipher:
    return cls(Environment(env={"CIPHER_KEY": key or cls.create_key(16)}))


@pytest.mark.parametrize("cls", CIPHER_CLASSES)
def test_class_attributes_and_key_helpers(cls: AESCipherType) -> None:
    assert issubclass(cls, Cipher)
    assert cls.CIPHER_KEY == "CIPHER_KEY"
    assert cls.KEY_SIZES == (16, 24, 32)
    for size in (16, 24, 32):
        key = cls.create_key(size)
        assert isinstance(key, str)
        make_cipher(cls, key)
    assert cls.create_key(16) != cls.create_key(16)
    for size in (0, 12, 33):
        with pytest.raises(ValueError) as exc_info:
            cls.create_key(size)
        assert str(exc_info.value) == f"Invalid key size: {size} not in (16, 24, 32)"
    cls.check_key_size(24)
    with pytest.raises(ValueError, match="Invalid key size: 8 not in"):
        cls.check_key_size(8)
    assert len(cls.random_bytes(7)) == 7


@pytest.mark.parametrize("cls", CIPHER_CLASSES)
def test_key_comes_from_environment_with_app_prefix_winning(cls: AESCipherType) -> None:
    with pytest.raises(OSError) as exc_info:
        cls(Environment())
    assert str(exc_info.value).startswith("'CIPHER_KEY' not in env")
    assert "create_key(32)" in str(exc_info.value)

    key_a, key_b = cls.create_key(16), cls.create_key(16)
    env = Environment("app", {"CIPHER_KEY": key_a, "APP_CIPHER_KEY": key_b})
    ciphertext = cls(env).encrypt(b"x")
    assert make_cipher(cls, key_b).decrypt(ciphertext) == b"x"
    with pytest.raises(ValueError):
        make_cipher(cls, key_a).decrypt(ciphertext)


@pytest.mark.parametrize("cls", CIPHER_CLASSES)
def test_key_that_is_not_base64_says_how_to_fix_it(cls: AESCipherType) -> None:
    secret = "this is not base64!"
    with pytest.raises(ValueError) as exc_info:
        make_cipher(cls, secret)
    message = str(exc_info.value)
    assert "'CIPHER_KEY'" in message and "not valid base64" in message
    assert "AESCipher.create_key(32)" in message
    assert secret not in message  # never echo a secret


@pytest.mark.parametrize("cls", CIPHER_CLASSES)
def test_key_of_wrong_size_says_how_to_fix_it(cls: AESCipherType) -> None:
    with pytest.raises(ValueError) as exc_info:
        make_cipher(cls, b64encode(b"k" * 15).decode())
    message = str(exc_info.value)
    assert message.startswith("Invalid key size: 15 not in (16, 24, 32)")
    assert "'CIPHER_KEY' decodes to 15 bytes" in message
    assert "AESCipher.create_key(32)" in message


@pytest.mark.parametrize("cls", CIPHER_CLASSES)
def test_encrypt_layout_and_round_trip(cls: AESCipherType) -> None:
    cipher = make_cipher(cls)
    plaintext = b"some plaintext"
    ciphertext = cipher.encrypt(plaintext)
    assert len(ciphertext) == 12 + 16 + len(plaintext)
    assert plaintext not in ciphertext
    assert cipher.encrypt(plaintext)[:12] != ciphertext[:12]  # a fresh nonce each time
    assert cipher.decrypt(ciphertext) == plaintext
    assert cipher.decrypt(cipher.encrypt(b"")) == b""


@pytest.mark.parametrize("cls", CIPHER_CLASSES)
def test_decrypt_rejects_damaged_data(cls: AESCipherType) -> None:
    cipher = make_cipher(cls)
    ciphertext = cipher.encrypt(b"plaintext")
    for data in (b"", b"x" * 11):
        with pytest.raises(ValueError, match=r"^Damaged cipher text: invalid nonce length$"):
            cipher.decrypt(data)
    for data in (b"x" * 12, b"x" * 27):
        with pytest.raises(ValueError, match=r"^Damaged cipher text: invalid tag length$"):
            cipher.decrypt(data)
    damaged = [
        ciphertext[:-1] + bytes([ciphertext[-1] ^ 1]),  # ciphertext
        ciphertext[:12] + bytes([ciphertext[12] ^ 1]) + ciphertext[13:],  # tag
        bytes([ciphertext[0] ^ 1]) + ciphertext[1:],  # nonce
        ciphertext[:28],  # truncated
    ]
    for data in damaged:
        with pytest.raises(ValueError) as exc_info:
            cipher.decrypt(data)
        assert str(exc_info.value) == MAC_MESSAGES[cls]


def test_both_modules_share_one_wire_format() -> None:
    key = cipher_module.AESCipher.create_key(32)
    a, b = (
        make_cipher(cipher_module.AESCipher, key),
        make_cipher(cryptography_module.AESCipher, key),
    )
    assert b.decrypt(a.encrypt(b"one")) == b"one"
    assert a.decrypt(b.encrypt(b"two")) == b"two"
    # One implementation: eventsourcing.cipher only changes the failed-MAC message.
    assert cipher_module.AESCipher.__mro__[1] is cryptography_module.AESCipher
    own_methods = [k for k, v in vars(cipher_module.AESCipher).items() if callable(v)]
    assert own_methods == []


def test_reads_what_eventsourcing_9_wrote() -> None:
    # Encrypted by eventsourcing 9.5.6 (pycryptodome) with this key.
    key = "gQBH4Yyq0zJ6YkYfQo8cI1lG4vUmjQxw4W9eQ6oM1sE="
    written = bytes.fromhex(
        "498cb1724da5f3679ad42a11a7ff44b23eb47ab23da9583430093488f7851c3d73b275"
    )
    for cls in CIPHER_CLASSES:
        assert make_cipher(cls, key).decrypt(written) == b'{"a":1}'


@pytest.mark.parametrize("module", ["eventsourcing.cipher", "eventsourcing.cryptography"])
def test_import_without_cryptography_says_which_extra_to_install(module: str) -> None:
    code = (
        "import sys\n"
        "sys.modules['cryptography'] = None\n"  # makes 'import cryptography...' fail
        f"import {module}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "pip install eventsourcing[crypto]" in result.stderr


@pytest.mark.parametrize("cls", CIPHER_CLASSES)
def test_wrong_key_in_mapper_names_the_stored_event(cls: AESCipherType) -> None:
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    writer: Mapper[UUID] = Mapper(transcoder, cipher=make_cipher(cls))
    reader: Mapper[UUID] = Mapper(transcoder, cipher=make_cipher(cls))
    event = cast(Any, DomainEvent)(  # the metaclass makes it a dataclass, unseen by mypy
        originator_id=uuid4(), originator_version=3, timestamp=DomainEvent.create_timestamp()
    )
    stored = writer.to_stored_event(event)
    with pytest.raises(MapperDeserialisationError) as exc_info:
        reader.to_domain_event(stored)
    message = str(exc_info.value)
    assert f"originator_id '{event.originator_id}' and originator_version 3" in message
    assert MAC_MESSAGES[cls] in message
    assert isinstance(exc_info.value, ValueError)


def test_zlib_compressor() -> None:
    compressor = ZlibCompressor()
    assert isinstance(compressor, Compressor)
    data = b"event state " * 100
    compressed = compressor.compress(data)
    assert len(compressed) < len(data)
    assert compressed == zlib.compress(data)  # plain zlib, readable by eventsourcing 9
    assert compressor.decompress(compressed) == data
    assert compressor.decompress(zlib.compress(b"x")) == b"x"
    with pytest.raises(zlib.error):
        compressor.decompress(b"not compressed")
