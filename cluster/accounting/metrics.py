"""Prometheus metrics of every call, kept by the accounting actor (it sees every gateway replica's
calls, so one scrape of /metrics is the whole platform). Labels never include the key itself."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LABELS = ("project", "service", "endpoint", "key_id", "model")
UNKNOWN = "(unknown)"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_BUCKETS = (1, 8, 32, 128, 512, 2048, 8192, 32768, 131072)


def _labels(record: dict) -> dict[str, str]:
    """Known ids and names only: a name that resolved to nothing is `(unknown)`, never the caller's text
    (random model names would grow the label set without bound)."""
    known = bool(record.get("service_id"))
    return {"project": record.get("project_id", ""), "service": record.get("service_id", ""),
            "endpoint": record.get("endpoint_id", ""), "key_id": record.get("key_id", ""),
            "model": record.get("model", "") if known else UNKNOWN}


class UsageMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("maas_requests", "Calls by HTTP status code.", LABELS + ("code",), registry=r)
        self.tokens = Counter("maas_tokens", "Tokens by kind (prompt, completion).", LABELS + ("kind",), registry=r)
        self.latency = Histogram("maas_request_latency_seconds", "End-to-end latency.", LABELS,
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("maas_ttft_seconds", "Time to first token (streams).", LABELS,
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("maas_tpot_seconds", "Time per output token (streams).", LABELS,
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_size = Histogram("maas_prompt_tokens", "Prompt tokens per call.", LABELS,
                                     buckets=_TOKEN_BUCKETS, registry=r)
        self.completion_size = Histogram("maas_completion_tokens", "Completion tokens per call.", LABELS,
                                         buckets=_TOKEN_BUCKETS, registry=r)
        self.inflight = Gauge("maas_requests_in_flight", "Admitted calls not yet settled.", LABELS, registry=r)
        self.denials = Counter("maas_admissions_denied", "Calls refused by a limit.", LABELS + ("reason",),
                               registry=r)

    def observe(self, record: dict) -> None:
        labels = _labels(record)
        self.requests.labels(**labels, code=str(record.get("status_code", 200))).inc()
        if record.get("status_code", 200) >= 400:
            return
        prompt, completion = record.get("prompt_tokens", 0), record.get("completion_tokens", 0)
        self.tokens.labels(**labels, kind="prompt").inc(prompt)
        self.tokens.labels(**labels, kind="completion").inc(completion)
        self.latency.labels(**labels).observe(record.get("latency_ms", 0.0) / 1000)
        self.prompt_size.labels(**labels).observe(prompt)
        self.completion_size.labels(**labels).observe(completion)
        if record.get("ttft_ms") is not None:
            self.ttft.labels(**labels).observe(record["ttft_ms"] / 1000)
        if record.get("tpot_ms") is not None:
            self.tpot.labels(**labels).observe(record["tpot_ms"] / 1000)

    def in_flight(self, record: dict, delta: int) -> None:
        self.inflight.labels(**_labels(record)).inc(delta)

    def denied(self, caller: dict, route: dict, endpoint: dict | None, reason: str) -> None:
        self.denials.labels(project=caller["project_id"], service=route["service_id"],
                            endpoint=endpoint["endpoint_id"] if endpoint else "", key_id=caller["key_id"],
                            model=route["name"], reason=reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
