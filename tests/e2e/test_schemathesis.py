"""A bounded schemathesis run of the control plane's OpenAPI against the running platform, once with the admin
key and once with a project key, `project_id` fixed to a scratch project: no input may get a 5xx.

Left out: the operations that start compute (service deploys and their start/scale/upgrade, tuning jobs and
their continue; each would start an engine or a Ray job) and the admin operations that change what every
project is offered (presets, freezes), which other tests rely on."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.helpers import BIN

pytestmark = pytest.mark.e2e
PROJECT = "fuzz"
EXCLUDED = [
    "POST /v1/{project_id}/services", "POST /v1/{project_id}/services/{service}/start",
    "POST /v1/{project_id}/services/{service}/scale", "POST /v1/{project_id}/services/{service}/upgrade",
    "POST /v1/{project_id}/maas/services/{service_id}",
    "POST /v1/{project_id}/finetune", "POST /v1/{project_id}/finetune/{job}/continue",
    "PUT /v1/presets/{model_id}", "POST /v1/presets/{model_id}/freeze", "POST /v1/{project_id}/presets/activate",
]


@pytest.fixture(scope="module")
def project_key(platform) -> str:
    with platform.admin() as admin:
        assert admin.post("/projects", json={"id": PROJECT}).status_code in (201, 409)
        label = "fuzz-key-" + "x" * 80  # a label no generated key id or label will hit
        return admin.post(f"/{PROJECT}/keys", json={"label": label, "description": "fuzz"}).json()["key"]


def _fuzz(platform, key: str, tmp_path) -> subprocess.CompletedProcess:
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\nproject_id = "{PROJECT}"\n')
    command = [str(BIN / "st"), "--config-file", str(config), "--no-color", "run",
               f"{platform.base_url}/api/openapi.json", "--url", f"{platform.base_url}/api",
               "-H", f"Authorization: Bearer {key}", "--checks", "not_a_server_error",
               "--phases", "coverage,fuzzing", "--max-examples", "8", "--seed", "20261201", "--workers", "1",
               "--request-timeout", "30", "--generation-database", "none", "--warnings", "off"]
    for name in EXCLUDED:
        command += ["--exclude-name", name]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)


@pytest.mark.parametrize("who", ["admin", "project"])
def test_no_input_gets_a_server_error(platform, project_key, tmp_path, who):
    done = _fuzz(platform, platform.admin_key if who == "admin" else project_key, tmp_path)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    tested = re.search(r"Tested: (\d+)", done.stdout)
    assert tested and int(tested.group(1)) >= 40 and "No issues found" in done.stdout, done.stdout[-3000:]
