"""The accounting actor implements every method of serve_apps.contract.ActorMethods, the only methods the gateway
and the engines call on it by name, with the same parameters (issue 27: the protocol was implemented by nothing and
had fallen behind, lacking heartbeat and witnessed)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from serve_apps.contract import ActorMethods
from tests.db.world import Actor

ROOT = Path(__file__).resolve().parents[2]


def _methods() -> dict[str, inspect.Signature]:
    return {name: inspect.signature(getattr(ActorMethods, name)) for name in dir(ActorMethods)
            if not name.startswith("_") and callable(getattr(ActorMethods, name))}


def test_the_actor_implements_the_contract_with_the_same_parameters():
    for name, signature in _methods().items():
        implemented = getattr(Actor, name, None)
        assert implemented is not None, f"the actor lacks {name}"
        parameters = [p for p in inspect.signature(implemented).parameters if p != "_ray_trace_ctx"]  # Ray adds it
        assert parameters == list(signature.parameters), name
        assert inspect.iscoroutinefunction(implemented) == inspect.iscoroutinefunction(getattr(ActorMethods, name)), name


def test_the_data_plane_calls_no_actor_method_outside_the_contract():
    called = set()
    for path in (ROOT / "serve_apps").rglob("*.py"):
        called |= set(re.findall(r"\.(\w+)\.remote\(", path.read_text()))
    actor_calls = {name for name in called if hasattr(Actor, name)}
    assert actor_calls <= set(_methods()), actor_calls - set(_methods())
