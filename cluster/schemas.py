"""What every resource's schemas share: strict request bodies, name rules, auto-stop durations and webhook
notification fields, the confirmation word of irreversible actions (one definition each; the rooms'
schemas.py compose them)."""

from __future__ import annotations

import re
from typing import Annotated, Callable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from cluster.runtime.webhooks import check_url
from serve_apps.errors import PlatformError

AUTO_STOP_PRESETS = ("1h", "2h", "4h", "6h")
MAX_AUTO_STOP_S = 30 * 86400
_DURATION = re.compile(r"^(\d+)([mh])$")
_WEBHOOK = re.compile(r"^https?://[^\s/]+")


class StrictModel(BaseModel):
    """A request body: an unknown field is refused (400), never silently dropped."""

    model_config = ConfigDict(extra="forbid")


def pattern_rule(pattern: str, message: str):
    """A validator that accepts a value matching `pattern` and otherwise fails with `message`."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


def confirmation(word: str, what: str) -> Callable[[str], None]:
    """A check that refuses an irreversible action (400) unless the caller typed the confirmation word."""
    def check(confirm: str) -> None:
        if confirm != word:
            raise PlatformError("MaaS.0400", reason=f"{what} needs the confirmation text {word}.")

    return check


def parse_auto_stop(value: str) -> int:
    """`1h`, `2h`, `4h`, `6h`, or a custom whole number of minutes or hours (`90m`, `12h`), up to 30 days."""
    match = _DURATION.fullmatch(value.strip())
    if not match:
        raise ValueError("auto_stop must be 1h, 2h, 4h, 6h or a custom duration such as 90m or 12h")
    seconds = int(match.group(1)) * (60 if match.group(2) == "m" else 3600)
    if not 60 <= seconds <= MAX_AUTO_STOP_S:
        raise ValueError("auto_stop must be between 1 minute and 30 days")
    return seconds


def format_duration(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds // 60}m"


def _auto_stop(value: str | None) -> str | None:
    if value is not None:
        parse_auto_stop(value)
    return value


AutoStop = Annotated[str | None, AfterValidator(_auto_stop)]


def auto_stop_seconds(value: str | None) -> int | None:
    return parse_auto_stop(value) if value else None


class Notified(StrictModel):
    """Webhook notification of status changes: a URL and the statuses to send (each body declares the type
    of `notify_events`, its own status values)."""

    notify_url: str | None = Field(None, max_length=1024, description="Webhook that receives a JSON POST for "
                                                                      "each status change in notify_events.")

    @model_validator(mode="after")
    def _notification(self):
        if self.notify_url is not None:
            if not _WEBHOOK.match(self.notify_url):
                raise ValueError("notify_url must be an http:// or https:// URL")
            check_url(self.notify_url)  # host, port, and not a private address unless an admin allows it
        if bool(self.notify_url) != bool(getattr(self, "notify_events", None)):
            raise ValueError("event notification needs both notify_url and at least one of notify_events")
        return self


class JobEventView(BaseModel):
    """A tuning or compression job's event: a status change, or a trouble the platform had with the job; with
    the outcome of its webhook (`notified`, and the failure appended to the message)."""

    id: int
    job_id: str
    at: int
    status: str
    message: str
    notified: bool

    @classmethod
    def of(cls, row) -> "JobEventView":
        return cls(id=row.id, job_id=row.job_id, at=row.at, status=row.status, message=row.message,
                   notified=row.notified)
