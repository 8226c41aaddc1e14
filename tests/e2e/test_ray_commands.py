"""The README's block of Ray's own commands (`ray job submit` of a fine-tune and of a compression, `serve
status`), run verbatim after `maas up` from a shell that has not activated the venv and has no Ray variable:
`PATH=/usr/bin:/bin`, `HOME`, and the platform's `MAAS_HOME` (and port) only. `maas env` gives the rest."""

from __future__ import annotations

import os
import re
import subprocess

from tests.helpers import ROOT


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- ray-commands:start -->\n```bash\n(.*?)```\n<!-- ray-commands:end -->", text, re.S)
    assert block, "README.md lost its ray-commands block"
    return block.group(1)


def test_the_readme_ray_commands_work_verbatim(platform):
    script = _readme_block()
    assert "ray job submit -- python -m train_jobs.finetune" in script
    assert "ray job submit -- $MAAS_COMPRESS_PYTHON -m quantize.compress" in script
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ["HOME"], "MAAS_HOME": platform.env["MAAS_HOME"],
           "MAAS_PORT": platform.env["MAAS_PORT"]}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert output.count("succeeded") >= 2, output[-6000:]  # both Ray Jobs: "Job 'raysubmit_...' succeeded"
    assert "job colors completed" in output and "job tiny-w8a8 completed" in output
    assert "maas-gateway" in output and "RUNNING" in output  # serve status reached the platform's Serve
