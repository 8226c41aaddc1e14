"""serve_apps.tenancy.cache_salt: one salt per project, not computable without the platform's secret, accepted by
vLLM's request validation, and it separates two projects' prefix-cache blocks in vLLM's own block hashing (the
engine core's code, the same on the CPU build: vllm/v1/core/kv_cache_utils.py)."""

from __future__ import annotations

import hashlib

import pytest

from serve_apps import tenancy
from serve_apps.settings import plane_settings

pytestmark = pytest.mark.unit
SECRET = b"s" * 32


def test_each_project_has_its_own_stable_salt():
    a, b = tenancy.cache_salt("proj-a", SECRET), tenancy.cache_salt("proj-b", SECRET)
    assert a != b
    assert tenancy.cache_salt("proj-a", SECRET) == a
    assert tenancy.cache_salt("proj-a", b"t" * 32) != a  # another platform secret, another salt
    assert a != hashlib.sha256(b"proj-a").hexdigest()  # not a plain hash of the id anyone can compute


def test_the_secret_comes_from_the_setting_and_is_shared_by_processes(monkeypatch):
    monkeypatch.setenv("MAAS_CACHE_SALT_SECRET", "a-platform-secret")
    plane_settings.cache_clear(), tenancy.salt_secret.cache_clear()
    try:
        configured = tenancy.cache_salt("proj-a")
        tenancy.salt_secret.cache_clear()
        assert tenancy.cache_salt("proj-a") == configured  # another process with the same setting agrees
        monkeypatch.delenv("MAAS_CACHE_SALT_SECRET")
        plane_settings.cache_clear(), tenancy.salt_secret.cache_clear()
        assert tenancy.cache_salt("proj-a") != configured  # unset: a random secret of this process
    finally:
        plane_settings.cache_clear(), tenancy.salt_secret.cache_clear()


def test_vllm_accepts_the_salt_on_chat_completions_responses_and_messages():
    from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest
    from vllm.entrypoints.generate.base.protocol import validate_cache_salt
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    salt = tenancy.cache_salt("a-project-id-of-any-length-" * 5, SECRET)
    validate_cache_salt(salt)  # at most 128 characters, none of '@', '/', '\\', NUL
    messages = [{"role": "user", "content": "hi"}]
    assert ChatCompletionRequest(model="m", messages=messages, cache_salt=salt).cache_salt == salt
    assert CompletionRequest(model="m", prompt="hi", cache_salt=salt).cache_salt == salt
    assert ResponsesRequest(model="m", input="hi", cache_salt=salt).cache_salt == salt
    assert AnthropicMessagesRequest(model="m", max_tokens=4, messages=messages, cache_salt=salt).cache_salt == salt


def test_two_projects_share_no_cached_block_of_the_same_prompt():
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request

    init_none_hash(sha256)
    hasher = get_request_block_hasher(16, sha256)
    prompt = list(range(100, 164))  # 4 full blocks of 16 tokens

    def blocks(project: str | None) -> list:
        salt = tenancy.cache_salt(project, SECRET) if project else None
        return hasher(Request("r", prompt, SamplingParams(max_tokens=1), None, cache_salt=salt))

    a, a_again, b, unsalted = blocks("proj-a"), blocks("proj-a"), blocks("proj-b"), blocks(None)
    assert len(a) == 4 and a == a_again  # a project's later calls hit its own cache
    assert not set(a) & set(b)  # every block differs: the salt is in the first, the others chain on it
    assert not set(a) & set(unsalted)


def test_maas_up_makes_one_cache_salt_secret_and_keeps_it(tmp_path):
    """A head `maas up` starts gets MAAS_CACHE_SALT_SECRET from MAAS_HOME: made once, 0600, the same afterwards
    (without it each gateway replica drew its own, and a project's cache hit only within one replica)."""
    import stat

    from cluster.auth import cache_salt_secret

    first = cache_salt_secret(tmp_path)
    assert len(first) >= 32 and cache_salt_secret(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "cache_salt_secret").stat().st_mode) == 0o600
