"""Binary attachments through the SDK, under asyncio and trio, on both transports and both
stores: ``Client.submit(attachments=...)`` to ``JobContext.attachments``, a handler's
``JobResult`` attachments to ``handle.attachments``, every byte value intact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from schedd.sdk import Client, JobContext, JobResult, Node
from schedd.sdk.job import attachment_items
from tests.sdk.daemon_thread import DaemonThread

pytestmark = pytest.mark.anyio

TIMEOUT = 20
AUDIO = bytes(range(256)) * 4096  # 1 MiB, every byte value


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def daemon(store_url: str, tmp_path: Path) -> Iterator[DaemonThread]:
    with DaemonThread(store_url, tmp_path) as running:
        yield running


@pytest.fixture(params=["ws", "tcp"])
def url(request: pytest.FixtureRequest, daemon: DaemonThread) -> str:
    return daemon.ws if request.param == "ws" else daemon.tcp


async def tts(ctx: JobContext) -> JobResult:
    audio = ctx.attachments["audio.wav"]
    assert ctx.media_types == {"audio.wav": "audio/wav", "note": "application/octet-stream"}
    return JobResult({"heard": len(audio), "note": ctx.attachments["note"].decode()},
                     attachments={"tts.wav": (audio[::-1], "audio/wav"), "empty": b""})


async def test_attachments_round_trip_client_node_client(url: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            await tg.start(Node(url, tts, pools=["p"], node_id="n1").run)
            async with Client.connect(url) as client:
                handle = await client.submit(
                    {"lang": "en"}, pools=["p"],
                    attachments={"audio.wav": (AUDIO, "audio/wav"), "note": memoryview(b"hi")})
                done = await handle.result()
                assert done.ok and done.output == {"heard": len(AUDIO), "note": "hi"}
                assert handle.attachments == {"tts.wav": AUDIO[::-1], "empty": b""}
                assert handle.media_types == {"tts.wav": "audio/wav",
                                              "empty": "application/octet-stream"}
                # a job without attachments still carries none
                plain = await client.submit(None, pools=["p"], attachments=None)
                failed = await plain.result()  # the handler finds no audio: the job fails
                assert not failed.ok and failed.error is not None
                assert "KeyError" in failed.error.message
                assert plain.attachments == {} and failed.attachments == []
            tg.cancel_scope.cancel()


async def test_a_submit_over_the_daemons_limit_is_refused(url: str) -> None:
    from schedd.sdk import RequestFailed

    with anyio.fail_after(TIMEOUT):
        async with Client.connect(url) as client:
            # the daemon's default sum per message is 8 MiB; each attachment is within 4 MiB:
            # refused by the client, then (told a higher limit) by the daemon
            for local in (True, False):
                if not local:
                    client.max_attachments = 1 << 30
                with pytest.raises(RequestFailed) as caught:
                    await client.submit(None, pools=["p"], attachments={
                        f"part{i}": AUDIO * 3 for i in range(3)})
                assert caught.value.code == "E_TOO_LARGE"
                assert "max_attachments" in caught.value.message
            # over max_attachment: refused before it is sent (the daemon would close)
            client.max_attachments = 1 << 30
            with pytest.raises(RequestFailed) as caught:
                await client.submit(None, pools=["p"], attachments={"big": AUDIO * 5})
            assert "(max_attachment)" in caught.value.message


def test_attachment_forms_and_refusals() -> None:
    specs, blobs = attachment_items([("a", b"1", "text/plain"), ("b", bytearray(b"22"), "x/y")])
    assert [(s.name, s.size, s.media_type) for s in specs] == [("a", 1, "text/plain"),
                                                               ("b", 2, "x/y")]
    assert blobs == [b"1", b"22"]
    with pytest.raises(TypeError):
        attachment_items({"a": "not bytes"})
    with pytest.raises(ValueError):
        attachment_items([("a", b"", "x/y"), ("a", b"", "x/y")])
    with pytest.raises(ValueError):
        attachment_items({"": b""})


async def test_the_readme_attachment_example(daemon: DaemonThread) -> None:
    from tests.sdk.test_readme_examples import example

    code = example("async def speak(ctx")
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            await tg.start(Node(daemon.tcp, code["speak"], pools=["tts"]).run)
            async with Client.connect(daemon.ws) as client:
                assert await code["ask"](client, AUDIO) == AUDIO
            tg.cancel_scope.cancel()


@pytest.mark.parametrize(("sizes", "trust_daemon"), [
    ((5 << 20,), False), ((3 << 20, 3 << 20, 3 << 20), False),
    ((3 << 20, 3 << 20, 3 << 20), True)],
    ids=["over_max_attachment", "over_max_attachments", "refused_by_the_daemon"])
async def test_a_result_over_the_daemons_limits_fails_the_job(
    url: str, sizes: tuple[int, ...], trust_daemon: bool,
) -> None:
    """A result over the daemon's limits (4 MiB per attachment, 8 MiB per message by default)
    fails its attempt with E_TOO_LARGE: the node checks them before sending, and when it was
    told higher limits than the daemon's, the daemon's refusal does the same."""

    async def too_big(ctx: JobContext) -> JobResult:
        return JobResult(None, attachments={f"a{i}": bytes(size) for i, size in enumerate(sizes)})

    node = Node(url, too_big, pools=["p"], node_id="n1")
    if trust_daemon:
        node.max_attachments = 1 << 30
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            await tg.start(node.run)
            async with Client.connect(url) as client:
                handle = await client.submit(None, pools=["p"])
                done = await handle.result()
                assert done.state == "failed" and done.error is not None
                assert done.error.code == "E_TOO_LARGE"
                assert ("max_attachment" if len(sizes) == 1 else "max_attachments") \
                    in done.error.message
                assert handle.attachments == {}
            tg.cancel_scope.cancel()
