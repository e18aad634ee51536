"""Binary attachments through the daemon, on both transports and both stores: a client's
``submit`` carries them to the node's ``assign``, a node's ``result`` to the client's ``done``,
bytes intact; limits per attachment and per message; malformed attachment framing."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest
import trio

import schedd.protocol as p
from schedd.protocol.attachments import Blob
from schedd.transport import ChannelClosed, StreamChannel, WebSocketChannel
from tests.daemon.harness import Daemon, running_daemon
from tests.websockets import open_websockets

M = TypeVar("M", bound=p.Message)

LIMITS = "[limits]\nmax_attachment = 2000\nmax_attachments = 3000\n"
#: every byte value, several times over
AUDIO = bytes(range(256)) * 7  # 1792 bytes


class Wire:
    """The peer's end of a connection over a real socket, speaking raw frames."""

    def __init__(self, channel: StreamChannel | WebSocketChannel) -> None:
        self.channel = channel

    async def send(self, message: p.Message, *blobs: bytes) -> None:
        await self.channel.send_many([p.encode(message), *(Blob(b) for b in blobs)])

    async def recv(self) -> p.Message:
        with trio.fail_after(10):
            return p.decode(await self.channel.receive())

    async def blob(self) -> bytes:
        with trio.fail_after(10):
            data = await self.channel.receive()
        assert isinstance(data, bytes)
        return bytes(data)

    async def expect(self, kind: type[M]) -> M:
        message = await self.recv()
        assert isinstance(message, kind), message
        return message

    async def closed(self) -> bool:
        with trio.fail_after(10):
            try:
                while True:
                    await self.channel.receive()
            except ChannelClosed:
                return True


def _channels(d: Daemon, transport: str) -> tuple[StreamChannel | WebSocketChannel,
                                                  StreamChannel | WebSocketChannel]:
    """(the daemon's side, as its transport plugin makes it; the peer's side)."""
    limits = d.app.limits
    ours, theirs = socket.socketpair()
    mine = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    daemons = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
    if transport == "tcp":
        return (StreamChannel(daemons, "127.0.0.1:40001", limits.max_frame,
                              hub=d.app.readiness, max_blob=limits.max_attachment),
                StreamChannel(mine, "daemon", 1 << 20, max_blob=1 << 20))
    server_ws, client_ws = open_websockets()
    return (WebSocketChannel(daemons, server_ws, "127.0.0.1:40001", limits.max_frame,
                             hub=d.app.readiness, max_blob=limits.max_attachment),
            WebSocketChannel(mine, client_ws, "daemon", 1 << 20, leftover=b"",
                             max_blob=1 << 20))


async def connect(d: Daemon, transport: str, role: str) -> Wire:
    daemon_side, peer_side = _channels(d, transport)
    d.nursery.start_soon(d.app.serve_channel, daemon_side)
    wire = Wire(peer_side)
    await wire.send(p.Hello(role=role, version=p.PROTOCOL_VERSION))  # type: ignore[arg-type]
    await wire.expect(p.Welcome)
    if role == "node":
        await wire.send(p.Register(node_id="n1", capacity=4, pools=["p"]))
        await wire.expect(p.Registered)
    return wire


@asynccontextmanager
async def daemon(store_url: str, tmp_path: object) -> AsyncIterator[Daemon]:
    async with running_daemon(store_url, LIMITS, tmp_path) as d:
        yield d


def spec(name: str, data: bytes, media: str = "audio/wav") -> p.Attachment:
    return p.Attachment(name=name, size=len(data), media_type=media)


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_attachments_go_client_to_node_to_client_intact(
    store_url: str, tmp_path: object, transport: str,
) -> None:
    async with daemon(store_url, tmp_path) as d:
        node = await connect(d, transport, "node")
        client = await connect(d, transport, "client")
        empty = b""
        await client.send(p.Submit(job_id="j1", pools=["p"], payload={"lang": "en"},
                                   attachments=[spec("audio.wav", AUDIO),
                                                spec("empty", empty, "text/plain")], ref="s1"),
                          AUDIO, empty)
        accepted = await client.expect(p.Accepted)
        assert accepted.job_id == "j1"
        assign = await node.expect(p.Assign)
        assert isinstance(assign, p.Assign)
        assert assign.payload == {"lang": "en"}
        assert assign.attachments == [spec("audio.wav", AUDIO), spec("empty", empty, "text/plain")]
        assert await node.blob() == AUDIO
        assert await node.blob() == empty
        tts = AUDIO[::-1] * 2  # 3584 bytes: over max_attachment is for peers, not the daemon
        tts = tts[:2000]
        await node.send(p.Accept(job_id="j1", attempt=1))
        await node.send(p.Result(job_id="j1", attempt=1, ok=True, output={"n": 1},
                                 attachments=[spec("tts.wav", tts)]), tts)
        done = await client.expect(p.Done)
        assert isinstance(done, p.Done) and done.ok and done.output == {"n": 1}
        assert done.attachments == [spec("tts.wav", tts)]
        assert await client.blob() == tts
        # the job's bytes are kept in one hash, counted in att_bytes
        keys = d.app.core.keys
        held = await d.app.store.execute("HGET", keys.job("j1"), "att_bytes")
        assert int(held) == len(AUDIO) + len(tts)
        # status shows the finished job with its result's attachments
        await client.send(p.Status(job_id="j1", ref="st"))
        job = await client.expect(p.Job)
        assert job.attachments == [spec("tts.wav", tts)] and job.ref == "st"
        assert job.info["attachment_bytes"] == len(AUDIO) + len(tts)
        assert await client.blob() == tts
        # a duplicate submit of the finished job gets its done again, with the bytes
        await client.send(p.Submit(job_id="j1", pools=["p"], ref="again"))
        await client.expect(p.Accepted)
        again = await client.expect(p.Done)
        assert again.attachments == [spec("tts.wav", tts)]
        assert await client.blob() == tts
        await client.channel.aclose()
        await node.channel.aclose()


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_limits_per_attachment_and_per_message(
    store_url: str, tmp_path: object, transport: str,
) -> None:
    async with daemon(store_url, tmp_path) as d:
        await connect(d, transport, "node")
        client = await connect(d, transport, "client")
        at_limit = bytes(2000)
        await client.send(p.Submit(job_id="at", pools=["p"],
                                   attachments=[spec("a", at_limit)]), at_limit)
        await client.expect(p.Accepted)
        # over the per-message sum: this message is refused, its frames dropped, the
        # connection goes on
        await client.send(p.Submit(job_id="sum", pools=["p"], ref="sum",
                                   attachments=[spec("a", at_limit), spec("b", bytes(1001))]),
                          at_limit, bytes(1001))
        error = await client.expect(p.Error)
        assert isinstance(error, p.Error)
        assert (error.code, error.ref) == (p.E_TOO_LARGE, "sum")
        assert "max_attachments" in error.message and "3000" in error.message
        await client.send(p.Status(job_id="sum", ref="st"))
        gone = await client.expect(p.Error)
        assert gone.code == "E_NO_JOB"
        # over the per-attachment limit: refused before its frame is read, connection closed
        over = bytes(2001)
        await client.send(p.Submit(job_id="over", pools=["p"], ref="over",
                                   attachments=[spec("a", over)]))
        error = await client.expect(p.Error)
        assert isinstance(error, p.Error) and error.code == p.E_TOO_LARGE
        assert "max_attachment" in error.message and "2000" in error.message
        assert error.ref == "over"
        assert await client.closed()


@pytest.mark.parametrize("transport", ["tcp", "ws"])
@pytest.mark.parametrize("case", ["fewer", "size", "undeclared", "role"])
async def test_malformed_attachment_framing_closes_and_loses_nothing_accepted(
    store_url: str, tmp_path: object, transport: str, case: str,
) -> None:
    async with daemon(store_url, tmp_path) as d:
        node = await connect(d, transport, "node")
        client = await connect(d, transport, "client")
        await client.send(p.Submit(job_id="kept", pools=["p"], attachments=[spec("a", AUDIO)]),
                          AUDIO)
        await client.expect(p.Accepted)
        two = [spec("a", AUDIO), spec("b", b"xyz")]
        if case == "fewer":  # declared 2, sent 1, then a message
            await client.send(p.Submit(job_id="bad", pools=["p"], attachments=two), AUDIO)
            await client.send(p.Ping(ref="x"))
        elif case == "size":
            await client.send(p.Submit(job_id="bad", pools=["p"], attachments=two), AUDIO,
                              b"xy")
        elif case == "undeclared":
            await client.channel.send(Blob(b"\x00\x01 not declared"))
        else:  # a node's result declared on a client connection: refused, frames consumed
            await client.send(p.Result(job_id="kept", attempt=1, ok=True,
                                       attachments=[spec("a", b"abc")], ref="r"), b"abc")
            error = await client.expect(p.Error)
            assert error.code == p.E_ROLE
            await client.send(p.Ping(ref="after"))
            assert (await client.expect(p.Pong)).ref == "after"
            return
        error = await client.expect(p.Error)
        assert isinstance(error, p.Error) and error.code == p.E_ATTACHMENT, error
        assert await client.closed()
        # what was accepted before stays: the first job reached the node, bytes intact
        assign = await node.expect(p.Assign)
        assert assign.job_id == "kept"
        assert await node.blob() == AUDIO
        other = await connect(d, transport, "client")
        await other.send(p.Status(job_id="bad", ref="st"))
        assert (await other.expect(p.Error)).code in ("E_NO_JOB", "E_NOT_YOURS")


async def test_another_principal_cannot_read_a_jobs_attachments(
    store_url: str, tmp_path: object,
) -> None:
    toml = LIMITS + '[auth]\nclient_tokens = ["alice", "bob"]\nnode_tokens = ["n"]\n'
    async with running_daemon(store_url, toml, tmp_path) as d:
        async def client(token: str) -> Wire:
            daemon_side, peer_side = _channels(d, "tcp")
            d.nursery.start_soon(d.app.serve_channel, daemon_side)
            wire = Wire(peer_side)
            await wire.send(p.Hello(role="client", version=p.PROTOCOL_VERSION, token=token))
            await wire.expect(p.Welcome)
            return wire

        alice, bob = await client("alice"), await client("bob")
        await alice.send(p.Submit(job_id="mine", pools=["p"], attachments=[spec("a", AUDIO)]),
                         AUDIO)
        await alice.expect(p.Accepted)
        # bob's duplicate submit or follow of alice's job gets neither the job nor its bytes
        await bob.send(p.Submit(job_id="mine", pools=["p"], ref="dup"))
        assert (await bob.expect(p.Error)).code == "E_NOT_YOURS"
        await bob.send(p.Follow(job_id="mine", ref="f"))
        assert (await bob.expect(p.Error)).code == "E_NOT_YOURS"


async def test_a_jobs_attachments_are_removed_with_it(store_url: str, tmp_path: object) -> None:
    toml = LIMITS + "[jobs]\nretention = 0\n[reaper]\ninterval = 0.02\n"
    async with running_daemon(store_url, toml, tmp_path) as d:
        node = await connect(d, "tcp", "node")
        client = await connect(d, "tcp", "client")
        await client.send(p.Submit(job_id="j1", pools=["p"], attachments=[spec("a", AUDIO)]),
                          AUDIO)
        await client.expect(p.Accepted)
        await node.expect(p.Assign)
        assert await node.blob() == AUDIO
        await node.send(p.Result(job_id="j1", attempt=1, ok=True,
                                 attachments=[spec("b", b"out")]), b"out")
        await client.expect(p.Done)
        assert await client.blob() == b"out"
        keys = d.app.core.keys
        with trio.fail_after(10):
            while await d.app.store.execute("EXISTS", keys.job("j1")):
                await trio.sleep(0.02)
        assert await d.app.store.execute("EXISTS", keys.job_blobs("j1")) == 0
