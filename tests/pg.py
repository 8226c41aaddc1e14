"""A throwaway PostgreSQL server for the tests: found (or installed) here, started in a temp dir, gone after.

    url = postgres_url()          # starts the server on first use, creates database "maas", returns its URL
    url = postgres_url("other")   # same server, another (new if missing) database
    stop_postgres()               # stops the server and removes its directory (also run at exit)

`.venv/bin/python -m tests.pg` prints a URL and keeps the server until Ctrl-C, for a developer's
`MAAS_DATABASE_URL=... maas up`.

Finding the server: `initdb` and `pg_ctl` on PATH, else the newest /usr/lib/postgresql/*/bin. Missing, and
root with apt-get: `apt-get install postgresql` (then `apt-get update` and again if that failed). Still missing:
the test is skipped, or fails when MAAS_REQUIRE_POSTGRES=1. PostgreSQL refuses to run as root, so as root the
server runs as the `postgres` user (made by the Debian package) or else `nobody`.
The server is tuned for throwaway data: no fsync, trust authentication, only 127.0.0.1 and a socket in its dir.
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port

SUPERUSER = "postgres"  # the database role initdb makes, whatever the OS user
_APT_LOCK = "/tmp/maas-tests-apt.lock"


class PostgresUnavailable(RuntimeError):
    pass


@dataclass
class _Server:
    bindir: Path
    root: Path  # holds data/, the socket and the log
    port: int
    uid: int | None  # None: run as ourselves
    gid: int | None
    databases: set[str]

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C", "LANG": "C"}
        kwargs = {}
        if self.uid is not None:
            env["HOME"] = str(self.root)
            kwargs = {"user": self.uid, "group": self.gid, "extra_groups": []}
        return subprocess.run(args, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, **kwargs)


_server: _Server | None = None
_failure: str | None = None  # why the server can't be had: asked once per process, not once per test


# -- finding or installing the binaries ---------------------------------------------------------------


def _version_key(path: str) -> tuple:
    name = Path(path).parent.name  # /usr/lib/postgresql/<version>/bin
    return tuple(int(p) if p.isdigit() else 0 for p in name.split("."))


def find_bindir() -> Path | None:
    """The directory that holds both initdb and pg_ctl, or None."""
    candidates = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)]
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _apt(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"}
    return subprocess.run(["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def install_postgres() -> Path:
    """apt-get install postgresql (root on a Debian-like machine only). Returns the bin dir."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresUnavailable("PostgreSQL (initdb, pg_ctl) is not installed, and it can be installed here only "
                                  "as root with apt-get: install it (e.g. `apt-get install postgresql`) or put its "
                                  "bin directory on PATH")
    with open(_APT_LOCK, "w") as lock:  # one installer at a time (parallel sessions on one machine)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (bindir := find_bindir()) is not None:
            return bindir
        install = ("install", "-y", "--no-install-recommends", "postgresql")
        done = _apt(*install, timeout=900)
        if done.returncode != 0:  # a fresh image has no package lists yet
            update = _apt("update", timeout=600)
            done = _apt(*install, timeout=900)
            if done.returncode != 0:
                raise PostgresUnavailable("apt-get install postgresql failed:\n"
                                          f"{update.stdout[-1500:]}{update.stderr[-1500:]}\n"
                                          f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable("apt-get installed postgresql, yet no initdb/pg_ctl in /usr/lib/postgresql/*/bin")
    return bindir


# -- starting and stopping ----------------------------------------------------------------------------


def _run_as() -> tuple[int | None, int | None]:
    if os.geteuid() != 0:
        return None, None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return entry.pw_uid, entry.pw_gid
    raise PostgresUnavailable("running as root, and there is neither a `postgres` nor a `nobody` user to run "
                              "PostgreSQL as (it refuses to run as root)")


def _base_dir(uid: int | None) -> str:
    # As root the server's user must reach the directory, and a socket path has ~100 characters at most:
    # /tmp is the safe choice then; else the usual temp dir unless its path is too long.
    return tempfile.gettempdir() if uid is None and len(tempfile.gettempdir()) < 60 else "/tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:  # a zombie (dead, not yet reaped by its parent) answers signal 0 too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _reap_orphans(base: str) -> None:
    """Stop and remove the servers of test processes that died without stopping theirs (killed, Ctrl-C'd twice).
    A server whose owner still runs (a parallel session) is left alone."""
    for root in Path(base).glob("maas-pg-*"):
        try:
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        try:
            pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
            if b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown
                for _ in range(50):
                    if not _alive(pid):
                        break
                    time.sleep(0.1)
        except (OSError, ValueError, IndexError):
            pass
        shutil.rmtree(root, ignore_errors=True)


def _make_root(uid: int | None, gid: int | None) -> Path:
    base = _base_dir(uid)
    _reap_orphans(base)
    root = Path(tempfile.mkdtemp(prefix="maas-pg-", dir=base))
    (root / "owner.pid").write_text(str(os.getpid()))
    if uid is not None:
        os.chown(root, uid, gid)
    return root


def _start(bindir: Path) -> _Server:
    uid, gid = _run_as()
    root = _make_root(uid, gid)
    server = _Server(bindir=bindir, root=root, port=0, uid=uid, gid=gid, databases=set())
    try:
        done = server.run(str(bindir / "initdb"), "-D", str(server.data), "-U", SUPERUSER, "-A", "trust",
                          "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        for _attempt in range(3):  # the free port can be taken between our check and the server's bind
            server.port = free_port()
            done = _pg_ctl_start(server)
            if done.returncode == 0:
                return server
            if "already in use" not in _log_tail(server):
                break
        raise PostgresUnavailable(f"pg_ctl start failed:\n{done.stdout[-1000:]}{done.stderr[-1000:]}\n"
                                  f"{_log_tail(server)}")
    except BaseException:
        _stop(server)
        raise


def _pg_ctl_start(server: _Server) -> subprocess.CompletedProcess:
    options = (f"-p {server.port} -k {server.root} -c listen_addresses=127.0.0.1 -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
               "-c shared_buffers=32MB -c dynamic_shared_memory_type=mmap")
    return server.run(str(server.bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(server.data),
                      "-l", str(server.log), "-o", options, timeout=90)


def _log_tail(server: _Server) -> str:
    try:
        return server.log.read_text(errors="replace")[-3000:]
    except OSError:
        return ""


def _stop(server: _Server) -> None:
    if (server.data / "postmaster.pid").exists():
        done = server.run(str(server.bindir / "pg_ctl"), "stop", "-w", "-t", "20", "-m", "immediate",
                          "-D", str(server.data), timeout=30)
        if done.returncode != 0:
            try:
                pid = int((server.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
            except (OSError, ValueError, IndexError):
                pass
    shutil.rmtree(server.root, ignore_errors=True)


def _create_database(server: _Server, database: str) -> None:
    import psycopg

    if database in server.databases:
        return
    with psycopg.connect(host="127.0.0.1", port=server.port, user=SUPERUSER, dbname="postgres",
                         autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
    server.databases.add(database)


def _unavailable(reason: str):
    import pytest

    if os.environ.get("MAAS_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (MAAS_REQUIRE_POSTGRES=1) but unavailable: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL server for the tests: {reason}")


# -- the API ------------------------------------------------------------------------------------------


def start_postgres(database: str = "maas") -> str:
    """Like postgres_url, but raises PostgresUnavailable instead of skipping."""
    global _server, _failure
    if not database.replace("_", "").isalnum():
        raise ValueError(f"database names here are letters, digits and _: {database!r}")
    if _failure is not None:
        raise PostgresUnavailable(_failure)
    if _server is None:
        try:
            bindir = find_bindir() or install_postgres()
            _server = _start(bindir)
        except PostgresUnavailable as exc:
            _failure = str(exc)
            raise
        except (OSError, subprocess.SubprocessError) as exc:
            _failure = f"{type(exc).__name__}: {exc}"
            raise PostgresUnavailable(_failure) from exc
        atexit.register(stop_postgres)
    _create_database(_server, database)
    return _server.url(database)


def postgres_url(database: str = "maas") -> str:
    """The SQLAlchemy URL of `database` on this session's PostgreSQL server, starting the server on first use.

    Skips the calling test when PostgreSQL can't be had (fails instead when MAAS_REQUIRE_POSTGRES=1)."""
    try:
        return start_postgres(database)
    except PostgresUnavailable as exc:
        _unavailable(str(exc))
        raise  # not reached: skip/fail raise


def pause_postgres() -> None:
    """A database outage: stop the server (fast shutdown), keeping its data; resume_postgres() brings it back."""
    if _server is not None:
        _server.run(str(_server.bindir / "pg_ctl"), "stop", "-w", "-t", "30", "-m", "fast", "-D",
                    str(_server.data), timeout=40)


def resume_postgres() -> None:
    """Start the paused server again, on the same port with the same data."""
    if _server is not None:
        done = _pg_ctl_start(_server)
        if done.returncode != 0:
            raise PostgresUnavailable(f"pg_ctl start failed:\n{done.stderr[-1000:]}\n{_log_tail(_server)}")


def stop_postgres() -> None:
    """Stop the server (if started) and remove its directory. Safe to call twice."""
    global _server
    server, _server = _server, None
    if server is not None:
        _stop(server)


def main() -> None:
    started = time.monotonic()
    try:
        url = start_postgres(sys.argv[1] if len(sys.argv) > 1 else "maas")
    except PostgresUnavailable as exc:
        sys.exit(f"no PostgreSQL: {exc}")
    print(url, flush=True)
    print(f"(started in {time.monotonic() - started:.1f} s; data in {_server.root}; Ctrl-C stops and removes it)",
          file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop_postgres()


if __name__ == "__main__":
    main()
