"""What the gateway and the control plane share (serve_apps.contract: how a key is hashed, how a bearer
token is read) and how an admission answer's error code becomes an exception (serve_apps.errors.error_for)."""

from __future__ import annotations

import hashlib
import re

import pytest

from serve_apps.contract import bearer_token, hash_key
from serve_apps.errors import OpenAIError, PlatformError, error_for


@pytest.mark.parametrize("secret", ["sk-abc", "admin-" + "x" * 43, "密钥", ""])
def test_a_key_is_stored_as_its_sha256_hex(secret):
    digest = hash_key(secret)
    assert digest == hashlib.sha256(secret.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)


def test_different_keys_have_different_hashes():
    assert hash_key("sk-a") != hash_key("sk-b") and hash_key("sk-a") == hash_key("sk-a")


@pytest.mark.parametrize("header, secret", [
    ("Bearer sk-abc", "sk-abc"),
    ("Bearer   sk-abc  ", "sk-abc"),
    ("Bearer ", ""),
    ("Bearer", ""),
    ("Basic abc", ""),
    ("sk-raw-key", ""),
    ("", ""),
])
def test_bearer_token_shapes(header, secret):
    assert bearer_token(header) == secret


def test_model_not_found_is_an_openai_error():
    error = error_for("model_not_found", model="x")
    assert isinstance(error, OpenAIError) and error.status == 404
    assert error.body() == {"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError",
                            "param": None, "code": 404}


def test_a_platform_code_is_a_platform_error():
    limited = error_for("ModelArts.81101", model="ignored", rpm=12)
    assert isinstance(limited, PlatformError) and limited.status == 429
    assert limited.body() == {"error_code": "ModelArts.81101",
                              "error_msg": "Too many requests, exceeded rate limit is 12 times per minute."}
    denied = error_for("ModelArts.81003")
    assert isinstance(denied, PlatformError) and denied.status == 401
    assert denied.body() == {"error_code": "ModelArts.81003", "error_msg": "Invalid authorization header."}
