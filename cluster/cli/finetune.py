"""`maas finetune ...`: tuning jobs (spec §7) from the command line; `create --follow` shows a progress bar."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cluster.cli.common import JsonOpt, ProjectOpt, call, client, console, fail, print_json

finetune_app = typer.Typer(help="Fine-tuning jobs on Ray Train (full, LoRA, continued pre-training).",
                           no_args_is_help=True)
COLUMNS = ["id", "name", "type", "model", "status", "iterations", "output_model", "result_version"]
DONE = {"completed", "failed", "stopped"}


def _table(rows: list[dict]) -> None:
    table = Table(*COLUMNS, "progress")
    for row in rows:
        p = row["progress"]
        progress = f"{p.get('step', 0)}/{p.get('total_steps', row['iterations'])} loss {p.get('loss', 0):.4f}" if p else "-"
        table.add_row(*[str(row[c]) for c in COLUMNS], progress)
    console.print(table)


def _follow(project: str, job_id: str) -> dict:
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task(job_id, total=None, loss="-")
        while True:
            job = call("GET", f"/{project}/finetune/{job_id}")
            p = job["progress"]
            progress.update(task, description=f"{job['name']} [{job['status']}]", total=job["iterations"] or None,
                            completed=p.get("step", 0), loss=f"{p['loss']:.4f}" if "loss" in p else "-")
            if job["status"] in DONE:
                return job
            time.sleep(2)


@finetune_app.command("create")
def create(name: str, model: str = typer.Option(..., "--model"), type_: str = typer.Option(..., "--type"),
           dataset: Path = typer.Option(..., "--dataset", exists=True, dir_okay=False),
           format_: str = typer.Option("alpaca", "--format"), epochs: int = typer.Option(1),
           learning_rate: float = typer.Option(2e-5), checkpoints: int = typer.Option(1),
           workers: int = typer.Option(1),
           node_type: str = typer.Option(None, "--node-type", help="Run the workers only on nodes with this "
                                                                   "custom Ray resource (e.g. maas-gpu)."),
           spread: bool = typer.Option(False, "--spread", help="One worker per node where the cluster allows."),
           batch_size: int = typer.Option(32, help="Global batch size."),
           output_model: str = typer.Option(None, help="Default: <name>-model."),
           model_version: str = typer.Option(None), description: str = typer.Option(""),
           max_failures: int = typer.Option(3, help="Automatic restarts from the latest checkpoint (1-128)."),
           auto_stop: str = typer.Option(None, help="Stop after this much running time: 1h, 2h, 4h, 6h, 90m, ..."),
           notify_url: str = typer.Option(None, help="Webhook for status changes (with --notify-events)."),
           notify_events: str = typer.Option("", help="Comma-separated statuses, e.g. running,completed,failed."),
           merge: bool = typer.Option(False, "--merge", help="LoRA: register the base model with the adapter "
                                                             "merged in (a full version) instead of the adapter."),
           follow: bool = typer.Option(False, "--follow", help="Show a progress bar until the job ends."),
           project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Upload the dataset, create the job (validated before any compute), and run it as a Ray Job."""
    try:
        with dataset.open("rb") as handle:
            response = client().http.post(f"/{project}/datasets", files={"file": (dataset.name, handle)})
    except OSError as exc:
        fail(exc)
    if response.status_code >= 400:
        fail(Exception(response.text))
    body = {"name": name, "model": model, "type": type_, "dataset": response.json()["id"], "format": format_,
            "epochs": epochs, "learning_rate": learning_rate, "checkpoints": checkpoints, "workers": workers,
            "global_batch_size": batch_size, "output_model": output_model or f"{name}-model",
            "description": description, "model_version": model_version, "max_failures": max_failures,
            "auto_stop": auto_stop, "notify_url": notify_url, "merge_lora": merge,
            "notify_events": [e.strip() for e in notify_events.split(",") if e.strip()],
            "node_type": node_type, "spread_workers": spread}
    job = call("POST", f"/{project}/finetune", json=body)
    if follow and job["status"] not in DONE:
        job = _follow(project, job["id"])
    if as_json:
        return print_json(job)
    _table([job])
    if job["status_reason"]:
        console.print(job["status_reason"])


@finetune_app.command("list")
def list_(project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    rows = call("GET", f"/{project}/finetune")
    return print_json(rows) if as_json else _table(rows)


@finetune_app.command("get")
def get(job: str, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    row = call("GET", f"/{project}/finetune/{job}")
    return print_json(row) if as_json else _table([row])


@finetune_app.command("stop")
def stop(job: str, project: str = ProjectOpt) -> None:
    row = call("POST", f"/{project}/finetune/{job}/stop")
    console.print(f"{row['name']}: {row['status']}")


@finetune_app.command("continue")
def continue_(job: str, project: str = ProjectOpt) -> None:
    """Run again from the latest checkpoint."""
    row = call("POST", f"/{project}/finetune/{job}/continue")
    console.print(f"{row['name']}: {row['status']} (run {row['runs']})")


@finetune_app.command("delete")
def delete(job: str, confirm: str = typer.Option("", "--confirm"), project: str = ProjectOpt) -> None:
    call("DELETE", f"/{project}/finetune/{job}", params={"confirm": confirm})
    console.print(f"Deleted tuning job {job}.")


@finetune_app.command("metrics")
def metrics(job: str, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    rows = call("GET", f"/{project}/finetune/{job}/metrics")
    if as_json:
        return print_json(rows)
    table = Table("step", "total", "%", "loss", "lr", "tokens/s", "elapsed s", "eta s")
    for r in rows:
        table.add_row(str(r["step"]), str(r["total_steps"]), f"{r['percent']:.1f}", f"{r['loss']:.4f}",
                      f"{r['learning_rate']:.2e}", f"{r['tokens_per_s']:.0f}", f"{r['elapsed_s']:.1f}",
                      f"{r['eta_s']:.1f}")
    console.print(table)


@finetune_app.command("logs")
def logs(job: str, search: str = typer.Option("", help="Only lines containing this text."),
         project: str = ProjectOpt) -> None:
    response = client().http.get(f"/{project}/finetune/{job}/logs", params={"search": search})
    if response.status_code >= 400:
        fail(Exception(response.text))
    console.print(response.text, highlight=False, markup=False)


@finetune_app.command("checkpoints")
def checkpoints(job: str, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    rows = call("GET", f"/{project}/finetune/{job}/checkpoints")
    if as_json:
        return print_json(rows)
    table = Table("name", "step", "path")
    for r in rows:
        table.add_row(r["name"], str(r["step"]), r["path"])
    console.print(table)
