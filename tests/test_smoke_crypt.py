"""The libmongocrypt driver harness talks to a real markd: handshake and a refused marking."""

from __future__ import annotations

from tests.support.crypt import CryptDriver
from tests.support.process import MarkdProcess, raw_command


def test_hello_over_op_msg(client):
    reply = client.admin.command("hello")
    assert reply["iscryptd"] is True
    assert reply["isWritablePrimary"] is True
    assert isinstance(reply["maxWireVersion"], int) and reply["maxWireVersion"] >= 26


def test_unknown_command(client):
    reply = raw_command(client, "admin", {"frobnicate": 1})
    assert reply == {"ok": 0.0, "errmsg": "no such command: 'frobnicate'", "code": 59, "codeName": "CommandNotFound"}


def test_key_vault_harness_decrypts_explicit_encryption(markd: MarkdProcess):
    driver = CryptDriver(markd.uri)
    try:
        key = driver.create_key("alt")
        ciphertext = driver.explicit_encrypt("secret", key, "AEAD_AES_256_CBC_HMAC_SHA_512-Deterministic")
        assert ciphertext.subtype == 6
        assert driver.decrypt_value(ciphertext) == "secret"
    finally:
        driver.close()
