"""Serve's inter-deployment gRPC server of a replica listens on the node's IP, not on every interface
(serve_apps.ray_compat.bind_serve_grpc_to_node_ip, on Ray 2.60's own server construction and address helper)."""

from __future__ import annotations

import asyncio

import psutil
import pytest
import ray
from ray._private.grpc_utils import create_grpc_server_with_interceptors
from ray.serve._private import replica

from serve_apps.ray_compat import bind_serve_grpc_to_node_ip

pytestmark = pytest.mark.unit


def _listening(port: int) -> set[str]:
    """The addresses a port of this process listens on (an IPv4 one bound by gRPC shows as ::ffff:a.b.c.d)."""
    return {c.laddr.ip.removeprefix("::ffff:") for c in psutil.Process().net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


async def _bound_port() -> int:
    """What Replica._on_initialized does (ray/serve/_private/replica.py:1835), on a server made as the replica's."""
    server = create_grpc_server_with_interceptors(asynchronous=True)
    port = replica.add_port_to_grpc_server(server, "[::]:0")
    await server.start()
    try:
        return port, _listening(port)
    finally:
        await server.stop(None)


def test_the_inter_deployment_grpc_server_listens_on_the_node_ip_only(monkeypatch):
    monkeypatch.setattr(replica, "add_port_to_grpc_server", replica.add_port_to_grpc_server)  # restored after
    _, before = asyncio.run(_bound_port())
    assert before & {"::", "0.0.0.0"}  # Ray's own choice: every interface
    bind_serve_grpc_to_node_ip()
    bind_serve_grpc_to_node_ip()  # idempotent
    port, after = asyncio.run(_bound_port())
    assert port and after == {ray.util.get_node_ip_address()}  # the address the handles dial, alone
