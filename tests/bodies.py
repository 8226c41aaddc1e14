"""What the trust tests send to the control plane as a hostile caller: a dataset upload streamed from disk, a
body streamed from a generator until the server answers (how much was sent by then), a large file written
fast, and a process's peak resident memory while a block runs."""

from __future__ import annotations

import json
import select
import socket
import threading
from pathlib import Path

import httpx
import psutil

MiB, GiB = 2**20, 2**30
BOUNDARY = "maas-test-boundary"


def multipart_head(name: str) -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()


MULTIPART_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(client: httpx.Client, path: Path) -> httpx.Response:
    """POST /datasets with the file streamed from disk a MiB at a time (this process never holds it)."""
    head = multipart_head(path.name)

    def body():
        yield head
        with path.open("rb") as file:
            while chunk := file.read(MiB):
                yield chunk
        yield MULTIPART_TAIL

    size = len(head) + path.stat().st_size + len(MULTIPART_TAIL)
    return client.post("/datasets", content=body(), headers={
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": str(size)})


class PeakRss:
    """A process's (default: this one's) largest resident set while the block runs, sampled every 5 ms."""

    def __init__(self, process: psutil.Process | None = None):
        self.process = process or psutil.Process()

    def __enter__(self):
        self.peak, self.done = 0, threading.Event()
        self.start = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *_exc):
        self.done.set()
        self.thread.join()

    @property
    def growth(self) -> int:
        return max(self.peak, self.start) - self.start


def write_repeated(path: Path, line: bytes, total: int) -> Path:
    """`line` repeated to about `total` bytes, written 8 MiB at a time (200 MiB in a second)."""
    chunk = line * (min(total, 8 * MiB) // len(line))
    with path.open("wb") as out:
        for _ in range(total // len(chunk)):
            out.write(chunk)
    return path


def send_until_answered(base: str, path: str, headers: dict, declared: int, pace_s: float = 0.0
                        ) -> tuple[int, dict, int]:
    """POST `declared` bytes of multipart body from a generator, a 64 KiB chunk at a time, until the server
    answers. Returns (status, JSON body, bytes of the body sent by then)."""
    host, port = base.removeprefix("http://").split("/")[0].split(":")
    head = multipart_head("big.jsonl")

    def body():
        yield head
        while True:
            yield b"{}\n" * (64 * 1024 // 3)

    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
             f"Content-Length: {declared}", *(f"{k}: {v}" for k, v in headers.items())]
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        for chunk in body():
            if select.select([sock], [], [], pace_s)[0] or sent >= declared:
                break  # the server answered (or would have to have read everything)
            chunk = chunk[:declared - sent]
            try:
                sock.sendall(chunk)
            except OSError:  # the server closed the connection after its answer
                break
            sent += len(chunk)
        answer = read_answer(sock)
    if b"\r\n\r\n" not in answer:
        return 0, {}, sent  # no answer at all
    head, content = answer.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(content or b"{}"), sent


def read_answer(sock: socket.socket) -> bytes:
    """One HTTP answer off a raw socket: its head and as much body as its Content-Length says (or until closed)."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
        data = sock.recv(65536)
        if not data:
            break
        answer += data
    return answer


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0
