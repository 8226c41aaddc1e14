"""Server-side render time of the web console's pages (issue 15: p50 <= 100 ms with 1,000 usage rows and 50
services), on SQLite, without Ray: the real cluster.app (console mounted) through Starlette's TestClient, the
accounting actor's reload and the reconciler's wake-up replaced by no-ops (nothing else differs from a page
served by the control plane; the HTTP proxy's hop is not included).

    .venv/bin/python benchmarks/console_render.py [--rows 1000] [--services 50] [--repeat 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ADMIN = "admin-console-bench"


class _Remote:
    async def remote(self, *args):
        return None


class _Actor:
    add_key = revoke_key = reload = _Remote()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    os.environ.update(MAAS_HOME=tempfile.mkdtemp(prefix="console-bench-"), MAAS_ADMIN_KEY=ADMIN,
                      MAAS_QUOTA_SERVICES=str(args.services + 10), MAAS_QUOTA_INSTANCES=str(args.services + 10))
    os.environ.pop("MAAS_DATABASE_URL", None)
    import re

    from starlette.testclient import TestClient

    import cluster.keys.router as keys_router
    import cluster.services.service as services
    from cluster.app import app, prepare
    from cluster.services.schemas import ServiceCreate
    from cluster.settings import get_settings
    from cluster.state.db import UsageRecord, session_scope

    async def nothing(*_args, **_kwargs):
        return None

    keys_router.accounting_actor = lambda: _Actor()
    services.after_change = nothing
    prepare(["tiny-chat", "all-minilm-l6-v2"])
    url = get_settings().database_url
    with session_scope(url) as session:
        for i in range(args.services):
            services.create(session, "default", ServiceCreate(name=f"svc{i:03d}", model="tiny-chat"))
    now, rng = time.time(), random.Random(0)
    with session_scope(url) as session:
        for _ in range(args.rows):
            ok = rng.random() > 0.1
            session.add(UsageRecord(
                request_id=uuid.uuid4().hex, ts=now - rng.random() * 6 * 3600, project_id="default",
                service_type="service", service_id=f"svc{rng.randrange(args.services):03d}", model="x",
                prompt_tokens=rng.randint(5, 500), completion_tokens=rng.randint(5, 500),
                status_code=200 if ok else 429, error_code="" if ok else "ModelArts.81101",
                latency_ms=rng.random() * 900, ttft_ms=rng.random() * 100, tpot_ms=rng.random() * 20, stream=True))

    client = TestClient(app)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/api/console/login").text)[1]
    client.post("/api/console/login", data={"csrf": token, "key": ADMIN})
    first_service = re.search(r'/services/([0-9a-f]{32})"', client.get("/api/console/p/default/services").text)[1]
    pages = {"usage (today, minute)": "/api/console/p/default/usage",
             "usage (7d, hour)": "/api/console/p/default/usage?range=7d&granularity=hour",
             "services (list)": "/api/console/p/default/services",
             "service (detail)": f"/api/console/p/default/services/{first_service}",
             "model square": "/api/console/p/default/models",
             "API keys": "/api/console/p/default/keys",
             "playground": "/api/console/p/default/playground",
             "compression (list)": "/api/console/p/default/compression",
             "my models": "/api/console/p/default/my-models",
             "presets (admin)": "/api/console/admin/presets"}
    results = []
    for name, path in pages.items():
        for _ in range(3):  # warm-up: templates compiled, caches filled
            assert client.get(path).status_code == 200, path
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200
        times.sort()
        results.append({"page": name, "p50_ms": round(statistics.median(times), 1),
                        "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 1),
                        "bytes": len(response.content)})
    print(f"{args.rows} usage rows, {args.services} services, {args.repeat} renders per page (SQLite, no Ray)\n")
    print("| page | p50 ms | p95 ms | HTML bytes |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['page']} | {r['p50_ms']} | {r['p95_ms']} | {r['bytes']} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, "services": args.services, "results": results}, indent=2))


if __name__ == "__main__":
    main()
