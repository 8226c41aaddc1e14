"""A LoRA version of a preset model answers on the preset's engine under the preset's offer: its access rules
(frozen 81006, not activated or not claimed 81004, expired 81014, quota used up 81005), its model-level RPM/TPM
(one window with the preset itself) and its free quota (the LoRA's tokens count, also after a restart).

The accounting actor's class runs here in-process on a real SQLite database; no Ray cluster is needed."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from cluster.accounting.actor import AccountingActor
from cluster.presets import service as preset_service
from cluster.presets.schemas import FreezeSpec
from cluster.state.db import ModelVersion, MyModel, Preset, PresetGrant, session_scope
from serve_apps.contract import hash_key
from tests.db.world import add_project_with_key, tpm_used

pytestmark = pytest.mark.db
SECRET = "sk-offer-test"
Actor = AccountingActor.__ray_actor_class__  # the plain class behind the Ray actor


@pytest.fixture
def url(migrated):
    url = migrated
    with session_scope(url) as session:
        add_project_with_key(session, SECRET)
        session.add(MyModel(id="mdl-1", project_id="p1", name="mine", base_model="tiny-chat"))
        session.flush()
        session.add(ModelVersion(id="mv-1", model_id="mdl-1", version=1, path="/nowhere/adapter", kind="lora"))
    return url


def _offer(url: str, **values) -> None:
    with session_scope(url) as session:
        preset = session.get(Preset, "tiny-chat")
        for name, value in values.items():
            setattr(preset, name, value)


def _grant(url: str, frozen: bool = False) -> None:
    with session_scope(url) as session:
        grant = session.get(PresetGrant, ("p1", "tiny-chat")) or PresetGrant(project_id="p1", model_id="tiny-chat")
        grant.frozen = frozen
        session.add(grant)


def _admit(actor, model: str, max_tokens: int = 10) -> dict:
    return actor._admit((hash_key(SECRET), model, 5, max_tokens))


def _settle(actor, answer: dict, tokens: int, started: float | None = None) -> None:
    record = answer["record"] | {"request_id": uuid.uuid4().hex, "ts": started or time.time(), "prompt_tokens": tokens,
                                 "completion_tokens": 0, "status_code": 200}
    asyncio.run(actor.settle_many([(answer["reservation"], record)]))


def test_the_lora_of_a_free_preset_with_a_quota_needs_the_claim_and_draws_on_the_quota(url):
    _offer(url, free_quota_tokens=100)
    actor = Actor(url)
    assert _admit(actor, "mine")["error"] == "ModelArts.81004"  # not claimed: as the preset itself
    assert _admit(actor, "tiny-chat")["error"] == "ModelArts.81004"
    _grant(url)
    actor.reload()
    answer = _admit(actor, "mine")
    assert "error" not in answer and answer["route"]["kind"] == "lora"
    _settle(actor, answer, 120)  # the LoRA's tokens use up the preset's free quota
    assert _admit(actor, "mine")["error"] == "ModelArts.81005"
    assert _admit(actor, "tiny-chat")["error"] == "ModelArts.81005"
    restarted = Actor(url)  # the quota used is rebuilt from the usage records, LoRA calls included
    assert _admit(restarted, "mine-v1")["error"] == "ModelArts.81005"


def test_the_lora_of_a_frozen_expired_or_unactivated_preset_is_refused_like_the_preset(url):
    _grant(url, frozen=True)
    actor = Actor(url)
    assert _admit(actor, "mine")["error"] == "ModelArts.81006"
    _grant(url, frozen=False)
    _offer(url, expires_at=int(time.time()) - 1)
    actor.reload()
    assert _admit(actor, "mine")["error"] == "ModelArts.81014"
    _offer(url, expires_at=None, kind="commercial")
    with session_scope(url) as session:
        session.delete(session.get(PresetGrant, ("p1", "tiny-chat")))
    actor.reload()
    assert _admit(actor, "mine")["error"] == "ModelArts.81004"  # a commercial preset not activated
    _grant(url)
    actor.reload()
    assert "error" not in _admit(actor, "mine")


def test_a_call_admitted_before_the_claim_does_not_draw_on_the_claimed_quota(url):
    """Before: every call on a free offer drew on its quota, so a call admitted before the admin set a quota
    and the project claimed it, settled after the claim's reload, used the fresh quota up (the e2e test of the
    LoRA saw 81005 on its first call after the claim); and the claim counted from its whole second, so the
    calls of that second before it counted too, after a restart."""
    actor = Actor(url)
    early, started = _admit(actor, "tiny-chat"), time.time()  # the offer has no quota yet
    assert "error" not in early
    _settle(actor, _admit(actor, "mine"), 50)  # settled before the claim, started before it: not on the quota
    _offer(url, free_quota_tokens=100)
    with session_scope(url) as session:
        preset_service.claim(session, "p1", "tiny-chat")
    actor.reload()
    _settle(actor, early, 500, started)  # its record's ts is its start; its settlement comes after the claim's reload
    answer = _admit(actor, "mine")
    assert "error" not in answer
    _settle(actor, answer, 60)
    assert "error" not in _admit(actor, "tiny-chat")  # 60 of 100 used
    assert "error" not in _admit(Actor(url), "tiny-chat")  # the same after a restart, from the records
    answer = _admit(actor, "mine")
    _settle(actor, answer, 60)
    assert _admit(actor, "tiny-chat")["error"] == "ModelArts.81005"
    assert _admit(Actor(url), "mine")["error"] == "ModelArts.81005"


def test_a_freeze_alone_is_no_activation_and_the_unfreeze_gives_none(url):
    """Before: freezing a project that never activated a commercial preset created its grant, and after the
    unfreeze the project could call the preset without activating it."""
    _offer(url, kind="commercial")
    actor = Actor(url)
    with session_scope(url) as session:
        assert preset_service.freeze(session, "tiny-chat", FreezeSpec(project_id="p1")).activated is False
    actor.reload()
    assert _admit(actor, "tiny-chat")["error"] == "ModelArts.81006"
    with session_scope(url) as session:
        preset_service.freeze(session, "tiny-chat", FreezeSpec(project_id="p1", frozen=False))
    actor.reload()
    assert _admit(actor, "tiny-chat")["error"] == "ModelArts.81004"
    assert _admit(actor, "mine")["error"] == "ModelArts.81004"
    with session_scope(url) as session:
        assert [v.activated for v in preset_service.project_presets(session, "p1")] == [False]
        preset_service.activate(session, "p1", ["tiny-chat"])
        assert [v.activated for v in preset_service.project_presets(session, "p1")] == [True]
    actor.reload()
    assert "error" not in _admit(actor, "tiny-chat")


def test_the_lora_shares_the_presets_model_level_rpm_and_tpm_window(url):
    _offer(url, rpm=2, tpm=10**9)
    actor = Actor(url)
    assert "error" not in _admit(actor, "mine")
    assert "error" not in _admit(actor, "tiny-chat")
    refused = _admit(actor, "mine")
    assert refused["error"] == "ModelArts.81101" and refused["params"] == {"rpm": 2}
    _offer(url, rpm=10**6, tpm=100)
    fresh = Actor(url)
    assert _admit(fresh, "mine", max_tokens=200)["error"] == "ModelArts.81103"


def test_a_call_that_can_never_run_is_refused_and_every_other_is_counted(url):
    """max_tokens of one choice at or over the context: refused with the context-length error (the gateway
    renders the product's 400), counting against no limit. Any other budget, however large (n choices whose sum
    reaches the context), is reserved and counted: before, such a call skipped every limit (issue 26, item 1)."""
    _offer(url, rpm=2, tpm=10**6)
    actor = Actor(url)
    for _ in range(3):
        answer = actor._admit((hash_key(SECRET), "tiny-chat", 5, 10**7, 1))
        assert answer["error"] == "context_length" and "reservation" not in answer and answer["context_check"]
        assert answer["params"]["max_tokens"] == 10**7 and answer["params"]["limit"] > 0
    context = answer["params"]["limit"]
    per_choice = context // 16 + 1  # 16 choices together over the context, each one far under it
    for _ in range(2):
        answer = actor._admit((hash_key(SECRET), "tiny-chat", 5, per_choice * 16, 16))
        assert "error" not in answer and answer["reservation"]
    assert tpm_used(actor) == 2 * (5 + per_choice * 16)  # the whole budget reserved
    assert actor._admit((hash_key(SECRET), "tiny-chat", 5, per_choice * 16, 16))["error"] == "ModelArts.81101"


def test_one_record_the_database_refuses_does_not_block_its_batch(url):
    """Before, one bad row failed the whole group commit, and the gateways re-sent it forever."""
    from sqlalchemy import select

    from cluster.accounting.store import row as _row
    from cluster.state.db import UsageRecord

    actor = Actor(url)
    base = {"project_id": "p1", "key_id": "k1", "model": "tiny-chat", "service_type": "free",
            "service_id": "tiny-chat", "endpoint_id": "", "ts": time.time(), "prompt_tokens": 3}
    good, bad = _row(base | {"request_id": "good"}), _row(base | {"request_id": "bad"})
    bad["model"] = {"not": "bindable"}  # what no driver can store
    actor._write([good, bad])
    with session_scope(url) as session:
        rows = {r.request_id: r for r in session.scalars(select(UsageRecord))}
    assert rows["good"].model == "tiny-chat" and rows["good"].error_code == ""
    assert rows["bad"].model == "" and rows["bad"].error_code == "MaaS.0400" and rows["bad"].prompt_tokens == 3


def test_a_limit_refusal_says_when_the_call_may_not_fit_the_context(url):
    """A prompt whose estimate is near or over the context: the refusal carries the route and context_check, so
    the gateway has the engine count it (its 400 comes before the 429); a small call's refusal does not."""
    _offer(url, rpm=10**6, tpm=100)
    _grant(url)
    actor = Actor(url)
    for model in ("tiny-chat", "mine"):
        near = actor._admit((hash_key(SECRET), model, 520, None))  # ~2,080 bytes: maybe over 2,048 tokens
        assert near["error"] == "ModelArts.81103" and near["context_check"] is True
        assert near["route"]["card"]["context_length"] == 2048 and "reservation" not in near
        small = actor._admit((hash_key(SECRET), model, 5, 200))
        assert small["error"] == "ModelArts.81103" and "context_check" not in small and "route" not in small
