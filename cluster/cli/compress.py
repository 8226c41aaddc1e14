"""`maas compress ...`: compression jobs (spec §6.2) from the command line; `create --follow` shows a
progress bar with the ETA."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.cli.common import JsonOpt, ProjectOpt, call, client, console, err, fail, print_json

compress_app = typer.Typer(help="Model compression jobs (SmoothQuant W8A8, AWQ W4A16, GPTQ W4A16).",
                           no_args_is_help=True)
COLUMNS = ["id", "name", "strategy", "model", "status", "output_model", "result_version"]
DONE = {"completed", "failed", "stopped"}


def _progress(row: dict) -> str:
    p = row["progress"]
    if not p:
        return "-"
    eta = f" eta {p['eta_s']:.0f} s" if p.get("eta_s") else ""
    return f"{p.get('percent', 0):.0f}%{eta}"


def _table(rows: list[dict]) -> None:
    table = Table(*COLUMNS, "progress")
    for row in rows:
        table.add_row(*[str(row[c]) for c in COLUMNS], _progress(row))
    console.print(table)


def _follow(project: str, job_id: str, as_json: bool) -> dict:
    """Poll until the job ends, with a progress bar (on stderr when stdout carries the JSON)."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TextColumn("eta {task.fields[eta]}"), TimeElapsedColumn(),
                  console=err if as_json else console) as progress:
        task = progress.add_task(job_id, total=100, eta="-")
        while True:
            job = call("GET", f"/{project}/compression/{job_id}")
            p = job["progress"]
            progress.update(task, description=f"{job['name']} [{job['status']}]", completed=p.get("percent") or 0,
                            eta=f"{p['eta_s']:.0f} s" if p.get("eta_s") is not None else "-")
            if job["status"] in DONE:
                return job
            time.sleep(2)


@compress_app.command("create")
def create(name: str, model: str = typer.Option(..., "--model", help="A catalog model or one of my models."),
           strategy: str = typer.Option(..., "--strategy", help="smoothquant-w8a8, awq-w4a16 or gptq-w4a16"),
           output_model: str = typer.Option(..., "--output-model", help="The model of mine the result becomes a "
                                                                         "new version of."),
           model_version: str = typer.Option(None, "--version", help="A version of my model (default: latest)."),
           migration_strength: float = typer.Option(None, help="SmoothQuant only: 0-1 (default 0.5)."),
           dataset: Path = typer.Option(None, "--dataset", exists=True, dir_okay=False,
                                        help="Calibration data (a fine-tuning format); default: built-in set."),
           format_: str = typer.Option("alpaca", "--format"),
           samples: int = typer.Option(64, "--samples", help="Calibration samples."),
           max_seq_len: int = typer.Option(512, help="Calibration sequence length."),
           description: str = typer.Option(""),
           auto_stop: str = typer.Option(None, help="Stop after this much running time: 1h, 2h, 4h, 6h, 90m, ..."),
           notify_url: str = typer.Option(None, help="Webhook for status changes (with --notify-events)."),
           notify_events: str = typer.Option("", help="Comma-separated statuses, e.g. running,completed,failed."),
           follow: bool = typer.Option(False, "--follow", help="Show a progress bar until the job ends."),
           project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Create the job (every rule checked before any compute) and run it as a Ray Job."""
    dataset_id = None
    if dataset is not None:
        try:
            with dataset.open("rb") as handle:
                response = client().http.post(f"/{project}/datasets", files={"file": (dataset.name, handle)})
        except OSError as exc:
            fail(exc)
        if response.status_code >= 400:
            fail(Exception(response.text))
        dataset_id = response.json()["id"]
    body = {"name": name, "model": model, "model_version": model_version, "strategy": strategy,
            "migration_strength": migration_strength, "output_model": output_model, "dataset": dataset_id,
            "format": format_, "num_samples": samples, "max_seq_len": max_seq_len, "description": description,
            "auto_stop": auto_stop, "notify_url": notify_url,
            "notify_events": [e.strip() for e in notify_events.split(",") if e.strip()]}
    job = call("POST", f"/{project}/compression", json=body)
    if follow and job["status"] not in DONE:
        job = _follow(project, job["id"], as_json)
    if as_json:
        return print_json(job)
    _table([job])
    if job["status_reason"]:
        console.print(job["status_reason"], highlight=False, markup=False)


@compress_app.command("list")
def list_(project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    rows = call("GET", f"/{project}/compression")
    return print_json(rows) if as_json else _table(rows)


@compress_app.command("get")
def get(job: str, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    row = call("GET", f"/{project}/compression/{job}")
    return print_json(row) if as_json else _table([row])


@compress_app.command("stop")
def stop(job: str, project: str = ProjectOpt) -> None:
    row = call("POST", f"/{project}/compression/{job}/stop")
    console.print(f"{row['name']}: {row['status']}")


@compress_app.command("delete")
def delete(job: str, confirm: str = typer.Option("", "--confirm"), project: str = ProjectOpt) -> None:
    call("DELETE", f"/{project}/compression/{job}", params={"confirm": confirm})
    console.print(f"Deleted compression job {job}.")


@compress_app.command("logs")
def logs(job: str, search: str = typer.Option("", help="Only lines containing this text."),
         project: str = ProjectOpt) -> None:
    response = client().http.get(f"/{project}/compression/{job}/logs", params={"search": search})
    if response.status_code >= 400:
        fail(Exception(response.text))
    console.print(response.text, highlight=False, markup=False)
