"""What the platform asks of a cluster with more than one node: a database every node's processes can share.

A SQLite file lives on one machine's disk: the control plane and the accounting actor may then run on
different nodes (or move after a restart) and each would open its own file. So on a multi-node cluster the
platform refuses SQLite and asks for MAAS_DATABASE_URL (PostgreSQL)."""

from __future__ import annotations


class ClusterUnsupported(RuntimeError):
    pass


def check_database(database_url: str, alive_nodes: int) -> None:
    if alive_nodes > 1 and database_url.startswith("sqlite"):
        raise ClusterUnsupported(
            f"This Ray cluster has {alive_nodes} nodes, and the platform's database is SQLite ({database_url}), a "
            "file on one node. Set MAAS_DATABASE_URL to a PostgreSQL server every node reaches (e.g. "
            "postgresql+psycopg://user:password@db-host/maas), and MAAS_STORAGE to storage every node mounts.")


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))
