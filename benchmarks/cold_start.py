"""Cold start of `maas up` (Ray head, control plane, two gateway replicas, the tiny-chat and all-minilm-l6-v2
engines, up to the first 200 answer of a new key), with vLLM's CPU worker inside the engine core process (the
platform's default, executor "uni") or in a process of its own (vLLM's default, "mp", set through each model
application's engine_kwargs). A fresh MAAS_HOME and a Ray head of its own per start, the built models shared;
the variants interleaved round by round (issue 14: cold start <= 90 s).

    flock /tmp/maas-heavy.lock .venv/bin/python benchmarks/cold_start.py [MAAS_HOME_WITH_MODELS] [ROUNDS] [uni,mp]

The third argument picks the variants (default both): `uni` alone measures the platform as it starts.
"""
import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving_overhead as so  # noqa: E402

HOME = sys.argv[1] if len(sys.argv) > 1 else str(Path("~/.maas").expanduser())
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
VARIANTS = {"uni (platform default)": "uni", "mp (vLLM default)": "mp"}
if len(sys.argv) > 3:
    VARIANTS = {name: backend for name, backend in VARIANTS.items() if backend in sys.argv[3].split(",")}


def serve_config(backend: str) -> str:
    config = yaml.safe_load(Path(so.tiny_chat_config().split("=", 1)[1]).read_text())
    for app in config["applications"]:
        if app["import_path"].startswith("serve_apps.model_app"):
            app["args"]["engine_kwargs"] = {"distributed_executor_backend": backend}
    path = Path(tempfile.mkdtemp(prefix="bench-cold-start-")) / "maas.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


rows = []
for rnd in range(ROUNDS):
    for name, backend in VARIANTS.items():
        args = argparse.Namespace(start_platform=True, gateway_url=f"http://127.0.0.1:{so.free_port()}",
                                  maas_home=HOME, start_timeout=600, max_tokens=8,
                                  platform_env=[f"MAAS_SERVE_CONFIG={serve_config(backend)}"])
        with so.gateway(args) as (_url, _headers, info):
            rows.append({"round": rnd, "variant": name, **info})
        print(rows[-1], flush=True)

print("\n| engine worker | cold start s | maas up returned s | Ray head s |\n|---|---|---|---|")
for name in VARIANTS:
    mine = [r for r in rows if r["variant"] == name]
    cells = [f"{statistics.median(r[k] for r in mine):.1f} ({' / '.join(f'{r[k]:.1f}' for r in mine)})"
             for k in ("cold_start_s", "maas_up_s", "ray_head_s")]
    print(f"| {name} | {' | '.join(cells)} |")
print("(median, then each round)")
