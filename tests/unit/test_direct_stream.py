"""serve_apps.direct_stream over real sockets: the engine replica's side (`StreamServer.relay`, run the way a Serve
replica runs a method's generator: in a task, its items handed over one by one) and the gateway's side
(`DetouredStream`). Whole streams, errors that stay on Serve, the gateway going away, the engine failing or
dying, a stranger's connection and a gateway that never attaches."""

from __future__ import annotations

import asyncio

import pytest

from serve_apps import direct_stream
from serve_apps.direct_stream import Detour, DetouredStream, StreamServer
from serve_apps.ray_compat import ErrorInfo, ErrorResponse


class ServeCall:
    """A Serve streaming call, as the gateway sees it: items of the replica's generator, cancel() cancels it."""

    def __init__(self, generator):
        self.items: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run(generator))

    async def _run(self, generator):
        try:
            async for item in generator:
                await self.items.put(("item", item))
            await self.items.put(("end", None))
        except Exception as exc:  # noqa: BLE001
            await self.items.put(("error", exc))

    async def __anext__(self):
        kind, value = await self.items.get()
        if kind == "end":
            raise StopAsyncIteration
        if kind == "error":
            raise value
        return value

    def cancel(self):
        self.task.cancel()


class Engine:
    """An engine method's stream of batches that records how it ended."""

    def __init__(self, batches: int, fail_at: int | None = None, pause: float = 0.0):
        self.batches, self.fail_at, self.pause = batches, fail_at, pause
        self.closed, self.sent = asyncio.Event(), 0

    async def stream(self):
        try:
            for index in range(self.batches):
                if index == self.fail_at:
                    raise ValueError("the engine broke")
                await asyncio.sleep(self.pause)
                self.sent += 1
                yield [f'data: {{"n":{index}}}\n\n']
        finally:
            self.closed.set()


async def _server() -> StreamServer:
    server = StreamServer()
    await server.start("127.0.0.1")
    return server


async def _drain(stream) -> list:
    return [batch async for batch in stream]


def test_a_whole_stream_arrives_in_order_and_only_the_first_batch_and_the_detour_use_serve():
    async def scenario():
        server, engine = await _server(), Engine(40)
        call = ServeCall(server.relay(engine.stream()))
        stream = DetouredStream(call)
        first = await stream.__anext__()
        rest = await _drain(stream)
        assert [first, *rest] == [[f'data: {{"n":{i}}}\n\n'] for i in range(40)]
        assert engine.closed.is_set() and call.task.done() and not server._waiting

    asyncio.run(scenario())


def test_an_error_answer_and_a_whole_answer_stay_on_serve():
    async def scenario():
        server = await _server()
        error = ErrorResponse(error=ErrorInfo(message="no", type="BadRequestError", code=400))

        async def single(item):
            yield item

        for item in (error, {"usage": {"prompt_tokens": 1}}):
            items = [i async for i in server.relay(single(item))]
            assert items == [item]  # no Detour: nothing waits for a connection
        assert not server._waiting

    asyncio.run(scenario())


def test_the_gateway_going_away_cancels_the_engine_stream():
    async def scenario():
        server, engine = await _server(), Engine(1000, pause=0.005)
        call = ServeCall(server.relay(engine.stream()))
        stream = DetouredStream(call)
        for _ in range(5):
            await stream.__anext__()
        stream.cancel()  # what the gateway does when its client goes away
        await asyncio.wait_for(engine.closed.wait(), 5)
        assert engine.sent < 1000

    asyncio.run(scenario())


def test_an_engine_failure_mid_stream_reaches_the_gateway_as_an_error():
    async def scenario():
        server, engine = await _server(), Engine(10, fail_at=4)
        stream = DetouredStream(ServeCall(server.relay(engine.stream())))
        got = [await stream.__anext__() for _ in range(4)]
        assert len(got) == 4
        with pytest.raises(RuntimeError, match="the engine broke"):
            await stream.__anext__()

    asyncio.run(scenario())


def test_a_replica_that_dies_leaves_the_connection_short_and_the_gateway_sees_a_failure():
    async def scenario():
        server, engine = await _server(), Engine(1000, pause=0.005)
        call = ServeCall(server.relay(engine.stream()))
        stream = DetouredStream(call)
        await stream.__anext__()
        await stream.__anext__()
        stream.writer.transport.abort()  # the connection drops without its end frame (as when the process dies)
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            for _ in range(1000):
                await stream.__anext__()
        call.cancel()

    asyncio.run(scenario())


def test_a_connection_without_the_token_gets_nothing_and_the_gateway_still_attaches():
    async def scenario():
        server, engine = await _server(), Engine(3, pause=0.05)
        call = ServeCall(server.relay(engine.stream()))
        assert (await call.__anext__()) == ['data: {"n":0}\n\n']
        detour = await call.__anext__()
        assert isinstance(detour, Detour) and len(detour.token) == direct_stream.TOKEN_BYTES
        reader, writer = await asyncio.open_connection(detour.host, detour.port)
        writer.write(b"0" * direct_stream.TOKEN_BYTES)  # a guess
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed on it, nothing sent
        reader, writer = await asyncio.open_connection(detour.host, detour.port)
        writer.write(detour.token.encode())
        writer.write_eof()
        assert b'{"n":1}' in await asyncio.wait_for(reader.read(), 5)  # the real token: the rest of the stream
        reader, writer = await asyncio.open_connection(detour.host, detour.port)
        writer.write(detour.token.encode())  # the same token again: used up
        assert await asyncio.wait_for(reader.read(), 5) == b""

    asyncio.run(scenario())


def test_a_gateway_that_never_attaches_closes_the_engine_stream(monkeypatch):
    monkeypatch.setattr(direct_stream, "ATTACH_TIMEOUT_S", 0.2)

    async def scenario():
        server, engine = await _server(), Engine(1000)
        items = [item async for item in server.relay(engine.stream())]
        assert isinstance(items[1], Detour) and len(items) == 2
        assert engine.closed.is_set() and engine.sent == 1 and not server._waiting

    asyncio.run(scenario())


def test_an_engine_the_gateway_cannot_reach_fails_the_call_and_cancels_it_on_serve():
    async def scenario():
        server, engine = await _server(), Engine(1000, pause=0.005)
        call = ServeCall(server.relay(engine.stream()))
        await call.__anext__()
        detour = await call.__anext__()
        await call.items.put(("item", Detour(detour.host, 1, detour.token)))  # a port nothing listens on
        stream = DetouredStream(call)
        with pytest.raises(OSError):
            await stream.__anext__()
        await asyncio.wait_for(engine.closed.wait(), 5)  # the Serve call was cancelled: the engine stopped

    asyncio.run(scenario())


def test_a_connection_without_the_secret_gets_nothing_and_is_closed_within_the_handshake_timeout():
    async def scenario():
        server, engine = await _server(), Engine(3, pause=0.05)
        call = ServeCall(server.relay(engine.stream()))
        await call.__anext__()
        detour = await call.__anext__()
        started = asyncio.get_running_loop().time()
        reader, writer = await asyncio.open_connection(detour.host, detour.port)
        writer.write(detour.token[:8].encode())  # part of a secret, then nothing
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing sent
        assert asyncio.get_running_loop().time() - started < direct_stream.HANDSHAKE_TIMEOUT_S + 0.5
        reader, writer = await asyncio.open_connection(detour.host, detour.port)
        writer.write(detour.token.encode())  # the secret was not used up by the stranger: the gateway attaches
        writer.write_eof()
        assert b'{"n":1}' in await asyncio.wait_for(reader.read(), 5)

    asyncio.run(scenario())


def test_a_hundred_idle_connections_do_not_keep_the_gateway_out(monkeypatch):
    """Before, the 65th connection was closed while 64 idle ones waited for their 5 s: anyone who could reach the
    port kept every stream of the engine from attaching. Now the newest connection closes the oldest idle one."""
    monkeypatch.setattr(direct_stream, "HANDSHAKE_TIMEOUT_S", 30.0)  # the idle ones are not timed out meanwhile

    async def scenario():
        server, engine = await _server(), Engine(3, pause=0.05)
        call = ServeCall(server.relay(engine.stream()))
        await call.__anext__()
        detour = await call.__anext__()
        idle = [await asyncio.open_connection(detour.host, detour.port) for _ in range(100)]  # send nothing
        await asyncio.sleep(0.1)
        assert len(server._handshakes) == direct_stream.MAX_HANDSHAKES  # never more slots held than that
        started = asyncio.get_running_loop().time()
        stream = DetouredStream(call)
        stream.generator.items.put_nowait(("item", detour))  # the gateway attaches while all 100 are idle
        rest = await asyncio.wait_for(_drain(stream), 5)
        assert rest == [['data: {"n":1}\n\n'], ['data: {"n":2}\n\n']] and engine.closed.is_set()
        assert asyncio.get_running_loop().time() - started < 2
        closed = 0
        for reader, _ in idle:  # none of them got a byte; those pushed out were closed
            try:
                data = await asyncio.wait_for(reader.read(), 0.01)
            except TimeoutError:
                continue
            assert data == b""
            closed += 1
        assert closed >= 100 - direct_stream.MAX_HANDSHAKES + 1  # the gateway's connection took a slot too

    asyncio.run(scenario())


def test_a_peer_that_is_not_a_cluster_node_is_closed_at_once_and_holds_no_slot():
    async def scenario():
        server = StreamServer(allowed=lambda address: address != "127.0.0.1")
        await server.start("127.0.0.1")
        engine = Engine(3)
        call = ServeCall(server.relay(engine.stream()))
        await call.__anext__()
        detour = await call.__anext__()
        reader, writer = await asyncio.open_connection(detour.host, detour.port)
        writer.write(detour.token.encode())  # even with the secret
        try:
            assert await asyncio.wait_for(reader.read(), 0.5) == b""
        except ConnectionResetError:  # closed with the secret unread: the kernel resets it; nothing was sent
            pass
        assert not server._handshakes and detour.token in server._waiting  # the secret is still the gateway's
        call.cancel()

    asyncio.run(scenario())
