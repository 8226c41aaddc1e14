"""`maas services`: deploy catalog models as the project's own services and manage their lifecycle."""

from __future__ import annotations

import time

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.cli.common import JsonOpt, ProjectOpt, call, console, fail, print_json

services_app = typer.Typer(help="Model services: your own deployments of catalog models.", no_args_is_help=True)
ConfirmOpt = typer.Option("", "--confirm", help="The confirmation word the action needs (YES or DELETE).")
WaitOpt = typer.Option(False, "--wait", help="Follow the status until the service settles.")
COLUMNS = ["id", "name", "model", "model_version", "status", "instances", "autoscale", "qps", "auto_stop",
           "description"]
AutoscaleOpt = typer.Option("off", "--autoscale", help="llm (vLLM's queue and KV usage), requests (Ray Serve's "
                                                       "policy) or off (--instances, fixed).")
MinOpt = typer.Option(None, "--min-instances", help="With --autoscale: the fewest instances (0: scale to zero).")
MaxOpt = typer.Option(None, "--max-instances", help="With --autoscale: the most instances.")
QuietOpt = typer.Option(None, "--quiet-period", help="llm: seconds without a waiting request before a scale-down.")
PanicOpt = typer.Option(None, "--panic-window", help="llm: seconds requests must wait before a scale-up.")
StableOpt = typer.Option(None, "--stable-window", help="llm: seconds of the averaging window.")
SETTLED = {"Running", "Concerning", "Failed", "Terminated", "Deleted"}


def _when(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _table(rows: list[dict]) -> None:
    table = Table(*COLUMNS)
    for row in rows:
        table.add_row(*["-" if row[c] is None else str(row[c]) for c in COLUMNS])
    console.print(table)


def _detail(view: dict) -> None:
    table = Table("field", "value", show_header=False)
    for key, value in view.items():
        if key == "replicas":
            value = ", ".join(f"{r['id']} ({r['state'].lower()})" for r in value) or "-"
        elif key == "last_scaling" and value:
            signals = ", ".join(f"{k} {v:g}" for k, v in (value.get("signals") or {}).items())
            value = (f"{_when(int(value['at']))}: {value['from_replicas']} -> {value['to_replicas']} "
                     f"({value.get('policy', '')}) {value.get('reason', '')}" + (f" [{signals}]" if signals else ""))
        elif key.endswith("_at"):
            value = _when(value)
        table.add_row(key, "-" if value in (None, "", []) else str(value))
    console.print(table)


def _wait(project: str, service: str, until: set[str], timeout: int) -> dict:
    """Show the status until it is one of `until` (or the service is gone, for a delete)."""
    from cluster.cli.client import ApiError
    from cluster.cli.common import client

    deadline = time.time() + timeout
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("[bold]{task.fields[status]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task(f"service {service}", status="...")
        while True:
            try:
                view = client().call("GET", f"/{project}/services/{service}")
            except ApiError as exc:
                if exc.status == 404 and "Deleted" in until:
                    progress.update(task, status="Deleted")
                    return {"name": service, "status": "Deleted"}
                fail(exc)
            progress.update(task, status=view["status"])
            if view["status"] in until:
                return view
            if time.time() > deadline:
                fail(TimeoutError(f"service {service} is still {view['status']} after {timeout} s"))
            time.sleep(2)


def _show(view: dict, as_json: bool, project: str, wait: bool, until: set[str] = SETTLED,
          timeout: int = 900) -> None:
    if wait and not as_json:
        view = _wait(project, view["id"], until, timeout)
    if as_json:
        return print_json(view)
    _detail(view)


@services_app.command("deploy")
def deploy(name: str = typer.Argument(..., help="1-64: a CJK character or letter first, then CJK, letters, "
                                                 "digits, - or _."),
           model: str = typer.Option(..., "--model", help="Catalog model id (`maas models list`)."),
           model_version: str = typer.Option("1", "--model-version", help="Model version."),
           instances: int = typer.Option(1, "--instances", help="Engine instances (replicas), fixed when "
                                                                "--autoscale is off."),
           autoscale: str = AutoscaleOpt, min_instances: int = MinOpt, max_instances: int = MaxOpt,
           max_batch: int = typer.Option(None, "--max-batch", help="Requests one instance runs at once (vLLM "
                                                                   "max_num_seqs); more wait in its queue."),
           quiet_period: float = QuietOpt, panic_window: float = PanicOpt, stable_window: float = StableOpt,
           qps: int = typer.Option(None, "--qps", help="Requests per second limit (default: none)."),
           node_type: str = typer.Option(None, "--node-type", help="Run the engines only on nodes with this "
                                                                   "custom Ray resource (e.g. maas-gpu)."),
           no_moderation: bool = typer.Option(False, "--no-moderation",
                                              help="Turn content moderation off (it is on by default)."),
           auto_stop: str = typer.Option(None, "--auto-stop", help="1h, 2h, 4h, 6h or custom (90m, 12h)."),
           description: str = typer.Option("", "--description", help="Up to 256 characters."),
           notify_url: str = typer.Option(None, "--notify-url", help="Webhook for status-change events."),
           notify_events: str = typer.Option(None, "--notify-events", help="Comma-separated statuses, e.g. "
                                                                           "Running,Terminated,Failed."),
           wait: bool = WaitOpt, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Deploy a catalog model as a service; it is callable with model=NAME once Running."""
    body = {"name": name, "model": model, "model_version": model_version, "instances": instances, "qps": qps,
            "moderation": not no_moderation, "auto_stop": auto_stop, "description": description,
            "notify_url": notify_url,
            "notify_events": [e.strip() for e in notify_events.split(",") if e.strip()] if notify_events else []}
    body |= _scaling(autoscale, min_instances, max_instances, quiet_period, panic_window, stable_window)
    if max_batch is not None:
        body["max_batch"] = max_batch
    if node_type is not None:
        body["node_type"] = node_type
    _show(call("POST", f"/{project}/services", json=body), as_json, project, wait)


def _scaling(autoscale: str, low: int | None, high: int | None, quiet: float | None, panic: float | None,
             stable: float | None) -> dict:
    body: dict = {"autoscale": autoscale}
    if low is not None:
        body["min_instances"] = low
    if high is not None:
        body["max_instances"] = high
    options = {k: v for k, v in (("quiet_period_s", quiet), ("panic_window_s", panic),
                                 ("stable_window_s", stable)) if v is not None}
    if options:
        body["autoscale_options"] = options
    return body


@services_app.command("autoscale")
def autoscale_(service: str, autoscale: str = typer.Option(..., "--autoscale", help="llm, requests or off."),
               min_instances: int = MinOpt, max_instances: int = MaxOpt,
               instances: int = typer.Option(None, "--instances", help="With --autoscale off: the fixed count."),
               quiet_period: float = QuietOpt, panic_window: float = PanicOpt, stable_window: float = StableOpt,
               wait: bool = WaitOpt, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Change how a running service scales (policy, bounds, windows); its replicas keep serving."""
    body = _scaling(autoscale, min_instances, max_instances, quiet_period, panic_window, stable_window)
    if instances is not None:
        body["instances"] = instances
    _show(call("POST", f"/{project}/services/{service}/autoscale", json=body), as_json, project, wait)


@services_app.command("list")
def list_(project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    rows = call("GET", f"/{project}/services")
    if as_json:
        return print_json(rows)
    _table(rows)


@services_app.command("get")
def get(service: str = typer.Argument(..., help="Service id or name."), project: str = ProjectOpt,
        as_json: bool = JsonOpt) -> None:
    """Details, status (one of the API's 18 values), instances, replicas running and targeted, and the last
    autoscaling decision with its signal."""
    _show(call("GET", f"/{project}/services/{service}"), as_json, project, wait=False)


@services_app.command("start")
def start(service: str, wait: bool = WaitOpt, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Start a Failed or Terminated service."""
    _show(call("POST", f"/{project}/services/{service}/start"), as_json, project, wait)


@services_app.command("stop")
def stop(service: str, wait: bool = WaitOpt, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Stop a queued, starting, running or alarmed service."""
    _show(call("POST", f"/{project}/services/{service}/stop"), as_json, project, wait)


@services_app.command("scale")
def scale(service: str, instances: int = typer.Argument(..., help="Instance count after the change."),
          confirm: str = ConfirmOpt, wait: bool = WaitOpt, project: str = ProjectOpt,
          as_json: bool = JsonOpt) -> None:
    """Change the instance count without interrupting calls. Fewer instances needs --confirm YES."""
    _show(call("POST", f"/{project}/services/{service}/scale", json={"instances": instances, "confirm": confirm}),
          as_json, project, wait)


@services_app.command("set-qps")
def set_qps(service: str, qps: int = typer.Argument(..., help="Requests per second."), project: str = ProjectOpt,
            as_json: bool = JsonOpt) -> None:
    """Change the QPS limit; it applies to the next request."""
    _show(call("POST", f"/{project}/services/{service}/qps", json={"qps": qps}), as_json, project, wait=False)


@services_app.command("upgrade")
def upgrade(service: str, model_version: str = typer.Option(..., "--version", help="Target model version."),
            wait: bool = WaitOpt, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Upgrade to another model version; the current one serves until the new one is ready. Irreversible."""
    _show(call("POST", f"/{project}/services/{service}/upgrade", json={"model_version": model_version}),
          as_json, project, wait)


@services_app.command("delete")
def delete(service: str, confirm: str = ConfirmOpt, wait: bool = WaitOpt, project: str = ProjectOpt,
           as_json: bool = JsonOpt) -> None:
    """Delete the service for good. Needs --confirm DELETE."""
    view = call("DELETE", f"/{project}/services/{service}", params={"confirm": confirm})
    if wait and not as_json:
        _wait(project, view["id"], {"Deleted"}, 600)
    if as_json:
        return print_json(view)
    console.print(f"Deleting service {view['name']} ({view['id']}).")


@services_app.command("events")
def events(service: str, project: str = ProjectOpt, as_json: bool = JsonOpt) -> None:
    """Status changes of the last 30 days, newest first."""
    rows = call("GET", f"/{project}/services/{service}/events")
    if as_json:
        return print_json(rows)
    table = Table("at", "status", "message", "notified")
    for row in rows:
        table.add_row(_when(row["at"]), row["status"], row["message"], "yes" if row["notified"] else "-")
    console.print(table)
