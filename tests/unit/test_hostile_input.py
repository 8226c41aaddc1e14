"""Hostile input refused by pure rules (no Ray): webhook destinations, forwarded client IPs, chat bodies that
could never run, dataset reports that would quote a whole file, and the texts moderation reads."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from cluster.runtime.webhooks import WebhookRefused, check_url
from serve_apps.gateway.admission import client_ip
from serve_apps.gateway.protocol import ChatRequest, CompletionRequest, completion_budget
from serve_apps.moderation import message_text, request_text
from train_jobs.datasets import RowError
from train_jobs.datasets.tables import read_csv_dataset

pytestmark = pytest.mark.unit
ASK = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("url, why", [
    ("http://h:x/", "not a valid URL"),  # the reproduction: this URL once killed the reconciler thread
    ("ftp://example.com/", "http:// or https://"),
    ("http://169.254.169.254/latest/meta-data", "private, loopback or link-local"),
    ("http://127.0.0.1:6379/", "private, loopback or link-local"),
    ("http://10.0.0.7/", "private, loopback or link-local"),
    ("http://[::1]:8000/", "private, loopback or link-local"),
    ("http://user:secret@example.com/", "credentials"),
])
def test_webhook_urls_that_the_platform_will_not_call(url, why):
    with pytest.raises(WebhookRefused, match=why):
        check_url(url)


def test_a_public_webhook_url_is_accepted():
    assert check_url("https://hooks.example.com/maas?x=1") == "https://hooks.example.com/maas?x=1"


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy():
    import ipaddress

    headers = {"x-forwarded-for": "203.0.113.9, 10.1.0.1"}  # the caller, then a trusted proxy's hop
    proxy = [ipaddress.ip_network("10.1.0.0/16")]
    assert client_ip(headers, SimpleNamespace(host="10.1.2.3"), proxy) == "203.0.113.9"
    assert client_ip(headers, SimpleNamespace(host="198.51.100.4"), proxy) == "198.51.100.4"  # anyone else
    assert client_ip(headers, SimpleNamespace(host="198.51.100.4"), []) == "198.51.100.4"  # none trusted
    assert client_ip({"x-forwarded-for": "-"}, SimpleNamespace(host="10.1.2.3"), proxy) == ""


@pytest.mark.parametrize("bad, field", [
    ({"max_tokens": -5}, "max_tokens"), ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"), ({"n": 0}, "n"), ({"n": 17}, "n"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
])
def test_chat_bodies_that_can_never_run_are_refused(bad, field):
    with pytest.raises(ValidationError) as refused:
        ChatRequest(**({"model": "m", "messages": ASK} | bad))
    assert refused.value.errors()[0]["loc"][0] == field


def test_admission_reserves_every_choice_and_max_completion_tokens_first():
    assert completion_budget(ChatRequest(model="m", messages=ASK, max_tokens=10, n=3)) == 30
    assert completion_budget(ChatRequest(model="m", messages=ASK, max_tokens=10, max_completion_tokens=4)) == 4
    assert completion_budget(ChatRequest(model="m", messages=ASK)) is None  # the rest of the context
    assert completion_budget(CompletionRequest(model="m", prompt="x", n=2)) == 32  # 16 by default


def test_a_dataset_report_quotes_an_excerpt_never_the_file(tmp_path):
    secret_line = "SECRET_ENV=" + "x" * 5000  # a file that is not a dataset, read as a csv header
    path = tmp_path / "not-a-dataset.csv"
    path.write_text(secret_line + "\n")
    errors = [item for item in read_csv_dataset(path) if isinstance(item, RowError)]
    assert len(errors) == 1 and errors[0].field == "header"
    assert len(errors[0].reason) <= 300 and "x" * 100 not in errors[0].reason
    assert len(RowError(line=1, field="f" * 500, reason="r" * 5000).reason) == 300


def test_moderation_reads_tools_reasoning_and_tool_call_arguments():
    body = ChatRequest(model="m", messages=[
        {"role": "user", "content": "plain"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "ARGTEXT"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "TOOLRESULT"},
    ], tools=[{"type": "function", "function": {"name": "lookup", "description": "DESCRIPTION",
                                                 "parameters": {"type": "object", "properties": {
                                                     "q": {"type": "string", "description": "PARAMDOC"}}}}}])
    text = request_text(body)
    for part in ("plain", "ARGTEXT", "TOOLRESULT", "DESCRIPTION", "PARAMDOC"):
        assert part in text
    answer = {"content": "", "reasoning_content": "THOUGHT",
              "tool_calls": [{"function": {"name": "f", "arguments": "ARGS"}}]}
    assert "THOUGHT" in message_text(answer) and "ARGS" in message_text(answer)


def test_x_forwarded_for_is_read_from_the_right_and_garbage_is_no_address():
    """Proxies append: the left-most values are whatever the caller wrote. The right-most hop that is not a
    trusted proxy is the caller; a value that is not an IP on that path makes the caller unknown."""
    import ipaddress

    from serve_apps.gateway.admission import NodeAddresses

    proxy = [ipaddress.ip_network("10.1.0.0/16")]
    peer = SimpleNamespace(host="10.1.2.3")
    assert client_ip({"x-forwarded-for": "1.2.3.4, 203.0.113.9"}, peer, proxy) == "203.0.113.9"  # 1.2.3.4: forged
    assert client_ip({"x-forwarded-for": "1.2.3.4, 203.0.113.9, 10.1.0.8"}, peer, proxy) == "203.0.113.9"
    assert client_ip({"x-forwarded-for": "10.1.0.9, 10.1.0.8"}, peer, proxy) == "10.1.0.9"  # all trusted: the first
    assert client_ip({"x-forwarded-for": "1.2.3.4, evil"}, peer, proxy) == ""
    assert client_ip({"x-forwarded-for": "203.0.113.9\n"}, peer, proxy) == "203.0.113.9"  # stripped, an IP
    nodes = NodeAddresses(read=lambda: {"10.0.0.5"})
    relayed = {"x-maas-peer": "<script>"}  # from HAProxy's node, but not an address: unknown, not believed
    assert client_ip(relayed, SimpleNamespace(host="10.0.0.5"), [], nodes) == ""
