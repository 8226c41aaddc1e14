"""serve_apps.haproxy_peer (the HAProxy Ray starts on the platform's port, with the caller's address) and the
gateway's reading of it (admission.client_ip)."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

import pytest

from serve_apps.gateway.admission import NodeAddresses, client_ip
from serve_apps.haproxy_peer import main, with_peer_header
from tests.helpers import free_port

pytestmark = pytest.mark.unit
CONFIG = """defaults
    mode http
frontend prometheus
    bind :9101
frontend http_frontend
    bind 0.0.0.0:8000
    acl routes path -i /-/routes
backend app
    server a 10.0.0.2:30001
"""


def test_the_http_frontend_sets_the_peer_header_and_nothing_else_changes():
    out = with_peer_header(CONFIG)
    assert out == CONFIG.replace("    bind 0.0.0.0:8000\n",
                                 "    bind 0.0.0.0:8000\n    http-request set-header X-Maas-Peer %[src]\n")


def test_rays_haproxy_template_still_has_the_frontend_the_wrapper_looks_for():
    # A Ray upgrade that renames the frontend would leave every caller's address as HAProxy's: fail here first.
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

    assert "\nfrontend http_frontend\n    bind {{ config.frontend_host }}:{{ config.frontend_port }}\n" in (
        HAPROXY_CONFIG_TEMPLATE)


def test_the_wrapper_execs_the_real_haproxy_on_a_copy_with_the_line(tmp_path, monkeypatch):
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG)
    calls = []
    monkeypatch.setenv("MAAS_HAPROXY_BINARY", "/opt/haproxy")
    monkeypatch.setattr("os.execv", lambda binary, argv: calls.append((binary, argv)))
    main(["-db", "-f", str(config), "-dR", "-sf", "123"])
    [(binary, argv)] = calls
    assert binary == "/opt/haproxy" and argv == ["/opt/haproxy", "-db", "-f", f"{config}.maas", "-dR", "-sf", "123"]
    assert (tmp_path / "haproxy.cfg.maas").read_text() == with_peer_header(CONFIG).replace(
        "    bind :9101\n", "    bind 127.0.0.1:9101\n")
    assert config.read_text() == CONFIG  # Ray's own file is left as Ray wrote it


def test_the_peer_header_is_believed_only_from_a_ray_nodes_address():
    nodes = NodeAddresses(read=lambda: {"10.0.0.5"})
    relayed = {"x-maas-peer": "198.51.100.7"}
    assert client_ip(relayed, SimpleNamespace(host="10.0.0.5"), [], nodes) == "198.51.100.7"  # HAProxy on a node
    assert client_ip(relayed, SimpleNamespace(host="127.0.0.1"), [], nodes) == "198.51.100.7"  # on this one
    assert client_ip(relayed, SimpleNamespace(host="203.0.113.4"), [], nodes) == "203.0.113.4"  # anyone else


def test_behind_haproxy_x_forwarded_for_is_believed_from_a_trusted_proxy_as_before():
    nodes = NodeAddresses(read=lambda: {"10.0.0.5"})
    proxy = [ipaddress.ip_network("192.0.2.0/24")]
    headers = {"x-maas-peer": "192.0.2.10", "x-forwarded-for": "203.0.113.9, 192.0.2.1"}
    assert client_ip(headers, SimpleNamespace(host="10.0.0.5"), proxy, nodes) == "203.0.113.9"
    headers = {"x-maas-peer": "198.51.100.7", "x-forwarded-for": "203.0.113.9"}  # the caller wrote XFF itself
    assert client_ip(headers, SimpleNamespace(host="10.0.0.5"), proxy, nodes) == "198.51.100.7"


def test_an_unknown_address_rereads_the_nodes_at_most_once_per_interval():
    reads = []
    nodes = NodeAddresses(read=lambda: reads.append(1) or {"10.0.0.5"}, refresh_s=60)
    assert not nodes.has("10.0.0.9") and not nodes.has("10.0.0.9") and nodes.has("10.0.0.5")
    assert len(reads) == 1
    assert not nodes.has("not an address") and len(reads) == 1


def test_the_real_haproxy_runs_the_copy_sets_the_peer_and_answers_its_errors_in_the_platforms_shape(tmp_path):
    """The bundled HAProxy on a configuration shaped like Ray's: a caller's own X-Maas-Peer is replaced by its
    address, and with the backend gone the answer is the platform's 503, not Ray's bare 500."""
    import http.server
    import subprocess
    import threading
    import time

    import httpx

    from serve_apps.haproxy_peer import real_binary, with_error_pages

    seen = []

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get_all("X-Maas-Peer"))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    front, gone = free_port(), free_port()
    (tmp_path / "500.http").write_text("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""global
    maxconn 100
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    errorfile 502 {tmp_path}/500.http
    errorfile 503 {tmp_path}/500.http
    errorfile 504 {tmp_path}/500.http
frontend http_frontend
    bind 127.0.0.1:{front}
    use_backend gone if {{ path_beg /gone }}
    default_backend app
backend app
    server a 127.0.0.1:{backend.server_address[1]}
backend gone
    server b 127.0.0.1:{gone}
""")
    copy = with_error_pages(with_peer_header(config.read_text()), str(tmp_path))
    (tmp_path / "haproxy.cfg.maas").write_text(copy)
    check = subprocess.run([real_binary(), "-c", "-f", f"{config}.maas"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    haproxy = subprocess.Popen([real_binary(), "-db", "-f", f"{config}.maas"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{front}/v1/models", headers={"X-Maas-Peer": "203.0.113.66"})
                break
            except httpx.TransportError:
                assert time.time() < deadline
                time.sleep(0.1)
        assert answer.status_code == 200 and seen == [["127.0.0.1"]]
        down = httpx.get(f"http://127.0.0.1:{front}/gone")
        assert down.status_code == 503 and down.json()["error_code"] == "MaaS.0503", down.text
    finally:
        haproxy.terminate()
        haproxy.wait(10)
        backend.shutdown()


def test_the_stats_page_and_the_exporter_listen_on_loopback_only():
    from serve_apps.haproxy_peer import with_loopback_admin_ports

    config = ("frontend prometheus\n    bind :9101\n    mode http\nfrontend http_frontend\n    bind *:8000\n"
              "listen stats\n  bind *:8404\n  stats enable\n")
    rewritten = with_loopback_admin_ports(config)
    assert "    bind 127.0.0.1:9101\n" in rewritten and "  bind 127.0.0.1:8404\n" in rewritten
    assert "    bind *:8000\n" in rewritten  # the platform's own port is left as Ray set it
