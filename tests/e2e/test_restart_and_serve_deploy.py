"""State survives `maas down` and a restart of the whole Ray cluster, and `ray start --head` + `serve deploy
ray_configs/maas.yaml` gives the same platform. It takes the session's platform down and up again: marked
disruptive, it runs at the end of the session (tests/e2e/conftest.py)."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest
import yaml

from tests.helpers import BIN, DASHBOARD_PORT, ROOT, SERVE_PORT, start_ray_head, stop_ray


def _wait_for_answer(client, deadline_s: float):
    start, last = time.time(), None
    while time.time() - start < deadline_s:
        try:
            return client.chat.completions.create(model="tiny-chat", max_tokens=4,
                                                  messages=[{"role": "user", "content": "hi"}])
        except Exception as exc:  # not up yet: connection refused, 404 while routes load, 503
            last = exc
            time.sleep(2)
    pytest.fail(f"the platform did not answer within {deadline_s}s: {last!r}")


@pytest.mark.disruptive
def test_down_then_serve_deploy_brings_back_the_same_platform(platform, tmp_path):
    survivor = platform.new_key("survives-restarts")
    client = platform.client(survivor["key"])
    assert client.chat.completions.create(model="tiny-chat", max_tokens=2,
                                          messages=[{"role": "user", "content": "hi"}]).choices

    down = platform.maas("down")
    assert "Stopped the MaaS applications" in down.stdout
    with pytest.raises(httpx.HTTPError):
        httpx.get(platform.base_url + "/v1/models", headers={"Authorization": f"Bearer {survivor['key']}"},
                  timeout=5).raise_for_status()
    assert platform.maas("status", check=False).returncode == 1

    stop_ray(platform.env)  # the whole Ray cluster goes away too
    start_ray_head(platform.env)
    config = yaml.safe_load((ROOT / "ray_configs" / "maas.yaml").read_text())
    config["http_options"]["port"] = SERVE_PORT
    path = tmp_path / "maas.yaml"
    path.write_text(yaml.safe_dump(config))
    deploy = subprocess.run([str(BIN / "serve"), "deploy", str(path), "--address",
                             f"http://127.0.0.1:{DASHBOARD_PORT}"], env=platform.env, capture_output=True,
                            text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr

    answer = _wait_for_answer(client, deadline_s=600)  # the key made before both restarts still works
    assert answer.choices[0].message.content is not None
    assert {m.id for m in client.models.list().data} >= {"tiny-chat", "all-minilm-l6-v2"}
    embedding = client.embeddings.create(model="all-minilm-l6-v2", input="hello")
    assert len(embedding.data[0].embedding) == 384
