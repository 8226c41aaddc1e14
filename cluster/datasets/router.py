"""REST routes of dataset uploads: `/v1/{project_id}/datasets`.

Plain `def` routes: FastAPI runs them in its thread pool (they copy and walk files)."""

from __future__ import annotations

from fastapi import APIRouter, UploadFile

from cluster.datasets import service
from cluster.datasets.schemas import DatasetView
from cluster.deps import Confirmed, ProjectId, database_url
from cluster.state.db import session_scope

router = APIRouter(prefix="/v1/{project_id}", tags=["datasets"])
DeleteConfirmed = Confirmed("DELETE", "Deleting a dataset")


@router.post("/datasets", status_code=201)
def upload_dataset(project_id: ProjectId, file: UploadFile) -> dict:
    """Store a dataset file on the platform; its id is what a job's `dataset` names."""
    with session_scope(database_url()) as session:
        return service.store_dataset(session, project_id, file.filename, file.file, file.size)


@router.get("/datasets", response_model=list[DatasetView])
def list_datasets(project_id: ProjectId):
    """The project's uploads, oldest first, with their size, last use and expiry."""
    with session_scope(database_url()) as session:
        return service.list_datasets(session, project_id)


@router.delete("/datasets/{dataset_id}", status_code=204)
def delete_dataset(project_id: ProjectId, dataset_id: str, _confirmed: DeleteConfirmed):
    """Delete an upload no job may still read (a tuning job that can run or continue, an active compression)."""
    with session_scope(database_url()) as session:
        service.delete_dataset(session, project_id, dataset_id)
