"""A tuning job's status changes are compare-and-set: a stop that raced the job-sync thread's "completed"
is refused (409) instead of overwriting it (which made the next sync register the output a second time)."""

from __future__ import annotations

import pytest

from cluster.finetune import service
from cluster.state.db import TuningJob, session_scope
from serve_apps.errors import PlatformError

pytestmark = pytest.mark.db


@pytest.fixture
def url(migrated, tmp_path):
    url = migrated
    with session_scope(url) as session:
        session.add(TuningJob(id="ft-1", project_id="default", name="race", job_type="lora", model_ref="tiny-chat",
                              base_model="tiny-chat", dataset_path="/x", dataset_format="alpaca", params={},
                              output_model="out", output_dir=str(tmp_path / "out"), status="running"))
    return url


def test_a_stop_that_lost_the_race_to_completed_is_refused_and_changes_nothing(url):
    with session_scope(url) as api:
        row = service.find(api, "default", "race")
        service.check("stop", row)  # the API saw "running" ...
        with session_scope(url) as sync:  # ... and the job-sync thread commits "completed" meanwhile
            sync.get(TuningJob, "ft-1").status = "completed"
        with pytest.raises(PlatformError) as refused:
            service._claim(api, row, "stop", {"status": "stopping"})
    assert refused.value.status == 409 and "changed status meanwhile" in refused.value.message
    with session_scope(url) as session:
        assert session.get(TuningJob, "ft-1").status == "completed"


def test_a_claim_on_an_unchanged_job_applies(url):
    with session_scope(url) as api:
        row = service.find(api, "default", "race")
        service._claim(api, row, "stop", {"status": "stopping"})
        assert row.status == "stopping"
    with session_scope(url) as session:
        assert session.get(TuningJob, "ft-1").status == "stopping"
