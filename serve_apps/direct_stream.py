"""An engine's stream straight to the gateway over one TCP connection; Serve carries the call, not its chunks.

Through a Serve handle every streamed batch is a Ray object: on this project's machines that hop costs more CPU
per token than vLLM's forward pass (benchmarks/RESULTS.md, stream_cpu.py). So a streamed call travels like this:

- the gateway calls the engine's deployment through its handle as before (Serve picks the replica, counts the
  call as ongoing for routing and autoscaling, and cancels it when the gateway does);
- the engine replica yields the stream's first batch through Serve (time to first token is unchanged), then a
  `Detour`: its stream server's address and a one-time token;
- the gateway connects and sends the token; the replica writes every further batch to that connection as a
  frame (`B` + a pickled list of SSE strings), then `E` at the stream's end, or `X` + a message if the
  engine failed; then the Serve call ends.

Either side going away ends both: the gateway cancels the Serve call (the replica's pump is cancelled, vLLM
aborts the request) and closes the connection; a replica that dies leaves the connection without its `E`, which
the gateway reads as the engine's failure (its 503). MAAS_DIRECT_STREAMS=0 turns it off (every batch through
Serve, as before), for a cluster whose nodes cannot reach each other on free ports.

Who may read a stream: the server listens on its node's IP only (the address Serve's own handles dial), never on
every interface. A connection from an address that is not one of the cluster's nodes (nor loopback) is closed at
once, before it holds anything. Every other one must present the call's secret, a one-time token of 128 random
bits that only the gateway Serve handed the call to has (it came with the first batch, through Serve); a wrong one
is closed as soon as its 32 characters are in. A connection still owing its token holds a handshake slot for
HANDSHAKE_TIMEOUT_S at most (the gateway writes its token as it connects), and when all MAX_HANDSHAKES slots are
held the oldest is closed to seat the newest: idle connections, however many, cannot keep the gateway out.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Callable

log = logging.getLogger("maas.direct_stream")
ATTACH_TIMEOUT_S = 10.0  # how long a replica waits for the gateway to connect (then: the caller is gone)
HANDSHAKE_TIMEOUT_S = 1.0  # a connection's token must arrive this soon (the gateway writes it on connecting)
MAX_HANDSHAKES = 64  # connections still owing their token; a newer one closes the oldest (a flood holds no more)
TOKEN_BYTES = 32  # hex characters of the one-time token
HEADER = struct.Struct("!cI")  # frame kind, payload length


@dataclass(frozen=True)
class Detour:
    """What the engine replica yields through Serve after the first batch: where the rest of the stream is."""

    host: str
    port: int
    token: str


def _frame(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def detourable(first: Any) -> bool:
    """A stream's opening batch (SSE strings); errors and whole answers travel through Serve alone."""
    return isinstance(first, list) and bool(first) and isinstance(first[0], str)


class StreamServer:
    """One per engine replica, started with it. `allowed(address)`: whether a peer may connect at all (the
    cluster's nodes); every address when None."""

    def __init__(self, allowed: Callable[[str], bool] | None = None) -> None:
        self._waiting: dict[str, asyncio.Future] = {}
        self._server: asyncio.AbstractServer | None = None
        self._allowed = allowed
        self._handshakes: OrderedDict[int, asyncio.StreamWriter] = OrderedDict()  # owing their token, oldest first
        self.host, self.port = "", 0

    async def start(self, host: str) -> None:
        self._server = await asyncio.start_server(self._attach, host=host, port=0)
        self.host, self.port = host, self._server.sockets[0].getsockname()[1]

    async def _attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not peer or (self._allowed is not None and not self._allowed(peer[0])):
            writer.close()
            return
        if len(self._handshakes) >= MAX_HANDSHAKES:
            _, oldest = self._handshakes.popitem(last=False)
            oldest.close()  # its read below ends at once
        key = id(writer)
        self._handshakes[key] = writer
        try:
            token = (await asyncio.wait_for(reader.readexactly(TOKEN_BYTES), HANDSHAKE_TIMEOUT_S)).decode()
        except (asyncio.IncompleteReadError, TimeoutError, UnicodeDecodeError, ConnectionError):
            writer.close()
            return
        finally:
            self._handshakes.pop(key, None)
        waiting = self._waiting.pop(token, None)
        if waiting is None or waiting.done():
            writer.close()
            return
        waiting.set_result(writer)

    async def relay(self, batches: AsyncGenerator) -> AsyncGenerator:
        """The engine method's answer as Serve sees it: the first batch, a Detour, then nothing until the
        stream is over (it went over the connection)."""
        try:
            first = await batches.__anext__()
        except StopAsyncIteration:
            return
        yield first
        if self._server is None or not detourable(first):
            async for batch in batches:
                yield batch
            return
        token = secrets.token_hex(TOKEN_BYTES // 2)
        attached = asyncio.get_running_loop().create_future()
        self._waiting[token] = attached
        yield Detour(self.host, self.port, token)
        try:
            writer = await asyncio.wait_for(attached, ATTACH_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError) as exc:  # never attached, or the call cancelled meanwhile
            await batches.aclose()  # vLLM aborts the request now, not when the generator is collected
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.warning("the gateway did not take a stream within %.0f s: cancelled", ATTACH_TIMEOUT_S)
            return
        finally:
            self._waiting.pop(token, None)
        try:
            async for batch in batches:
                writer.write(_frame(b"B", pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)))
                await writer.drain()
            writer.write(_frame(b"E"))
            await writer.drain()
        except ConnectionError:  # the gateway went away: its cancellation of the Serve call follows
            log.info("the gateway closed a stream's connection")
        except Exception as exc:  # noqa: BLE001  (the engine failed mid-stream: the gateway's 503)
            writer.write(_frame(b"X", f"{type(exc).__name__}: {exc}".encode()))
            raise
        finally:
            await batches.aclose()
            writer.close()


class DetouredStream:
    """The gateway's side: iterates the Serve generator, and the connection while a Detour is in effect."""

    def __init__(self, generator) -> None:
        self.generator = generator
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def __aiter__(self):
        return self

    async def __anext__(self):
        while True:
            if self.reader is not None:
                kind, length = HEADER.unpack(await self.reader.readexactly(HEADER.size))
                payload = await self.reader.readexactly(length) if length else b""
                if kind == b"B":
                    return pickle.loads(payload)
                if kind == b"X":
                    raise RuntimeError(f"the engine failed mid-stream: {payload.decode(errors='replace')}")
                self._close()  # b"E": the stream is whole; the Serve call ends next
            item = await self.generator.__anext__()
            if not isinstance(item, Detour):
                return item
            try:
                self.reader, self.writer = await asyncio.open_connection(item.host, item.port)
            except OSError:  # the engine's node is not reachable on that port (MAAS_DIRECT_STREAMS=0 is the way)
                self.generator.cancel()
                raise
            self.writer.write(item.token.encode())

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    def cancel(self) -> None:
        self._close()
        self.generator.cancel()
