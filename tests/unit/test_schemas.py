"""What every resource's schemas share (cluster.schemas): strict bodies and name rules, auto-stop durations,
webhook notification fields and the confirmation word, also through the bodies that compose them
(ServiceCreate, JobCreate)."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import ValidationError

from cluster.finetune.schemas import JobCreate
from cluster.schemas import (AUTO_STOP_PRESETS, MAX_AUTO_STOP_S, StrictModel, auto_stop_seconds, confirmation,
                             format_duration, parse_auto_stop, pattern_rule)
from cluster.services.schemas import ServiceCreate
from serve_apps.errors import PlatformError

SERVICE = {"name": "svc", "model": "tiny-chat"}
JOB = {"name": "job", "model": "tiny-chat", "type": "lora", "dataset": "ds-1", "output_model": "out"}
# Each body with its own status values to notify.
BODIES = [pytest.param(ServiceCreate, SERVICE, ["Running", "Terminated"], id="service"),
          pytest.param(JobCreate, JOB, ["running", "stopped"], id="job")]
HOOK = "https://hooks.example.com/maas"


def test_auto_stop_values():
    assert [parse_auto_stop(v) for v in ("1h", "2h", "4h", "6h", "90m", "12h")] == [
        3600, 7200, 14400, 21600, 5400, 43200]
    for bad in ("0m", "1d", "h", "1.5h", "-1h", "721h"):
        with pytest.raises(ValueError):
            parse_auto_stop(bad)


def test_auto_stop_bounds_and_messages():
    assert [parse_auto_stop(p) for p in AUTO_STOP_PRESETS] == [3600, 7200, 14400, 21600]
    assert (parse_auto_stop("1m"), parse_auto_stop("720h"), parse_auto_stop(" 2h ")) == (60, MAX_AUTO_STOP_S, 7200)
    with pytest.raises(ValueError) as too_long:
        parse_auto_stop("43201m")
    assert str(too_long.value) == "auto_stop must be between 1 minute and 30 days"
    with pytest.raises(ValueError) as unknown:
        parse_auto_stop("1d")
    assert str(unknown.value) == "auto_stop must be 1h, 2h, 4h, 6h or a custom duration such as 90m or 12h"


def test_durations_are_shown_as_they_are_written():
    assert (format_duration(None), auto_stop_seconds(None), auto_stop_seconds("")) == (None, None, None)
    assert [format_duration(s) for s in (60, 3600, 5400, 43200)] == ["1m", "1h", "90m", "12h"]
    for text in ("45m", "1h", "90m", "12h", "720h"):
        assert format_duration(auto_stop_seconds(text)) == text


@pytest.mark.parametrize("body, fields, events", BODIES)
def test_auto_stop_field(body, fields, events):
    assert body(**fields).auto_stop is None
    assert body(**fields, auto_stop="90m").auto_stop == "90m"
    with pytest.raises(ValidationError) as refused:
        body(**fields, auto_stop="3d")
    [error] = refused.value.errors()
    assert error["loc"] == ("auto_stop",) and "auto_stop must be 1h, 2h, 4h, 6h" in error["msg"]


@pytest.mark.parametrize("body, fields, events", BODIES)
def test_notification_needs_an_http_url_and_events(body, fields, events):
    notified = body(**fields, notify_url=HOOK, notify_events=events)
    assert (notified.notify_url, [getattr(e, "value", e) for e in notified.notify_events]) == (HOOK, events)
    assert body(**fields).notify_url is None  # no notification at all is fine
    both = "event notification needs both notify_url and at least one of notify_events"
    for half in ({"notify_url": HOOK}, {"notify_events": events}, {"notify_url": HOOK, "notify_events": []}):
        with pytest.raises(ValidationError) as refused:
            body(**fields, **half)
        assert [e["msg"] for e in refused.value.errors()] == [f"Value error, {both}"], half
    for scheme in ("ftp://hooks.example.com/x", "hooks.example.com/x", "file:///etc/passwd"):
        with pytest.raises(ValidationError) as refused:
            body(**fields, notify_url=scheme, notify_events=events)
        assert [e["msg"] for e in refused.value.errors()] == [
            "Value error, notify_url must be an http:// or https:// URL"], scheme


@pytest.mark.parametrize("body, fields, events", BODIES)
def test_a_body_refuses_unknown_fields(body, fields, events):
    with pytest.raises(ValidationError) as refused:
        body(**fields, color="red")
    assert [(e["type"], e["loc"]) for e in refused.value.errors()] == [("extra_forbidden", ("color",))]


class _Coded(StrictModel):
    code: Annotated[str, pattern_rule(r"^[a-z]{1,3}$", "code must be 1-3 of a-z")]


def test_strict_model_and_pattern_rule():
    assert _Coded(code="abc").code == "abc"
    for bad in ("", "abcd", "AB", "a1"):
        with pytest.raises(ValidationError) as refused:
            _Coded(code=bad)
        assert [e["msg"] for e in refused.value.errors()] == ["Value error, code must be 1-3 of a-z"], bad
    with pytest.raises(ValidationError) as refused:
        _Coded(code="ab", extra=1)
    assert [(e["type"], e["loc"]) for e in refused.value.errors()] == [("extra_forbidden", ("extra",))]


def test_confirmation_word():
    check = confirmation("DELETE", "Deleting the thing")
    assert check("DELETE") is None
    for wrong in ("", "delete", "DELETE ", "YES"):
        with pytest.raises(PlatformError) as refused:
            check(wrong)
        assert refused.value.status == 400
        assert refused.value.body() == {"error_code": "MaaS.0400",
                                        "error_msg": "Deleting the thing needs the confirmation text DELETE."}
