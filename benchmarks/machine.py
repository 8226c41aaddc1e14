"""What every benchmark reports about the machine it ran on, and how busy the rest of the machine was."""

from __future__ import annotations

import os
import platform
import time


def machine() -> dict:
    model = platform.processor()
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    return {"cpu_count": os.cpu_count(), "cpu_model": model, "memory_gib": mem_gib,
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


class OtherLoad:
    """CPU time used by everything outside this benchmark's process tree (other users' tests, steal), in
    cores, between start() and stop(): on a shared machine it tells which rows were disturbed.

    Ray's daemons and workers are descendants of this process, but the raylet does not collect its exited
    workers' CPU times, so a thread polls the tree and keeps each process's last seen times."""

    def __init__(self, interval: float = 1.0):
        try:
            import psutil
        except ImportError:  # psutil comes with the test extra; without it the column stays empty
            psutil = None
        self.psutil, self.interval = psutil, interval
        self.thread = None

    def _busy(self) -> float:
        t = self.psutil.cpu_times()
        return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)

    def _poll(self) -> None:
        me = self.psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                with proc.oneshot():
                    times, key = proc.cpu_times(), (proc.pid, proc.create_time())
                self.seen[key] = times.user + times.system
            except self.psutil.Error:
                pass

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            self._poll()

    def start(self) -> None:
        if not self.psutil:
            return
        import threading

        self.seen: dict = {}
        self._poll()
        self.before, self.t0, self.busy0 = dict(self.seen), time.perf_counter(), self._busy()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def stop(self) -> float | None:
        if not self.thread:
            return None
        self.done.set()
        self.thread.join()
        self.thread = None
        self._poll()
        busy, wall = self._busy() - self.busy0, time.perf_counter() - self.t0
        own = sum(v - self.before.get(k, 0.0) for k, v in self.seen.items())
        return max(0.0, busy - own) / wall
