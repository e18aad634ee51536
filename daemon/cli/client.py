"""Talking to the daemon: the URLs to dial, reachability, what a failed conversation means, and
stopping on a signal."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import trio

from schedd.cli.base import (
    CLIENT_NAME,
    CONNECT_TIMEOUT,
    DEFAULT_URL,
    QUERY_TIMEOUT,
    URL_VARIABLE,
    CommandError,
)

if TYPE_CHECKING:
    from schedd.sdk.client import Client

log = logging.getLogger("schedd.cli")


def _urls(args: argparse.Namespace) -> list[str]:
    if args.url:
        return list(args.url)
    from_env = [url.strip() for url in os.environ.get(URL_VARIABLE, "").split(",") if url.strip()]
    return from_env or [DEFAULT_URL]


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or during, and the members of any group on the way."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        nested = getattr(current, "errors", None)
        if isinstance(nested, list | tuple):
            pending.extend(item for item in nested if isinstance(item, BaseException))
        if current.__cause__ is not None:
            pending.append(current.__cause__)
        if current.__context__ is not None and not current.__suppress_context__:
            pending.append(current.__context__)


_HINT: Final = "(is the daemon running? start it with: schedd run)"


def _connect_failure(urls: Sequence[str], exc: BaseException) -> str:
    """``cannot connect to <urls>: <reason>``, naming the OS-level reason when there is one."""
    where = ", ".join(urls)
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return f"cannot connect to {where}: connection refused {_HINT}"
        if isinstance(cause, socket.gaierror):
            return f"cannot connect to {where}: unknown host ({cause.strerror or cause})"
        if isinstance(cause, TimeoutError | trio.TooSlowError):
            return f"cannot connect to {where}: timed out {_HINT}"
        if isinstance(cause, OSError) and cause.strerror:
            return f"cannot connect to {where}: {cause.strerror[:1].lower()}{cause.strerror[1:]}"
    reason = str(exc) or type(exc).__name__
    for url in urls:  # the SDK names the URL too
        reason = reason.removeprefix(f"{url}: ")
    return f"cannot connect to {where}: {reason}"


def _request_failure(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None) or str(exc)
    return f"{code}: {message}" if code else message


def _raise_command_error(exc: BaseException, urls: Sequence[str], *, connected: bool) -> NoReturn:
    """Turn what ended a conversation with the daemon into a :class:`CommandError` (exit 2).

    ``connected``: whether the connection was established (a refusal before that is a refused
    ``hello``). Ctrl-C becomes :class:`KeyboardInterrupt`; anything unexpected is re-raised.
    """
    from schedd.sdk.client import RequestFailed
    from schedd.sdk.connect import ConnectFailed

    where = ", ".join(urls)
    leaves = list(_leaves(exc))
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        raise KeyboardInterrupt from None
    for leaf in leaves:
        if isinstance(leaf, CommandError):
            raise leaf from None
        if isinstance(leaf, ConnectFailed):
            raise CommandError(_connect_failure(urls, leaf)) from None
        if isinstance(leaf, RequestFailed) and not connected:
            hint = " (check --token or $SCHEDD_TOKEN)" if leaf.code == "E_AUTH" else ""
            raise CommandError(
                f"cannot connect to {where}: hello refused: {_request_failure(leaf)}{hint}"
            ) from None
        if isinstance(leaf, RequestFailed):
            raise CommandError(_request_failure(leaf)) from None
        if isinstance(leaf, trio.TooSlowError):
            raise CommandError(f"no answer from {where} in time") from None
        if isinstance(leaf, OSError | trio.BrokenResourceError | trio.ClosedResourceError):
            raise CommandError(f"connection to {where} lost: {leaf}") from None
        if isinstance(leaf, ValueError):  # a bad URL, or an argument the protocol refuses
            raise CommandError(str(leaf)) from None
    if not connected:
        # Whatever broke the connection attempt, the answer to the user is the same; -v shows
        # the traceback.
        error = next((leaf for leaf in leaves if isinstance(leaf, Exception)), None)
        if error is not None:
            log.debug("connection attempt failed", exc_info=error)
            raise CommandError(
                f"cannot connect to {where}: {type(error).__name__}: {error}"
            ) from None
    raise exc


async def _check_reachable(urls: Sequence[str]) -> None:
    """Open (and close) a channel to the first URL that answers; raise if none does."""
    from schedd.sdk.connect import ConnectFailed, open_channel

    failure: ConnectFailed | None = None
    for url in urls:
        try:
            async with open_channel(url, connect_timeout=CONNECT_TIMEOUT):
                return
        except ConnectFailed as exc:
            failure = exc
    assert failure is not None
    raise failure


async def _cancel_on_signal(
    scope: trio.CancelScope, logger: logging.Logger,
    signums: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
    stopped_by: list[signal.Signals] | None = None,
) -> None:
    """Cancel ``scope`` at the first of ``signums``, noting it in ``stopped_by`` if given."""
    with trio.open_signal_receiver(*signums) as signals:
        async for signum in signals:
            logger.info("%s: stopping", signal.Signals(signum).name)
            if stopped_by is not None:
                stopped_by.append(signal.Signals(signum))
            scope.cancel()
            return


T = TypeVar("T")


def _run_client(
    args: argparse.Namespace,
    body: Callable[[Client], Awaitable[T]],
    *,
    reconnect: bool = False,
) -> T:
    """Connect to the daemon, run ``body`` with the client, map failures to :class:`CommandError`.

    Connection failures and refused requests are exit status 2. The first connection is tried
    once per URL either way; ``reconnect`` lets a long wait survive a daemon restart.
    """
    from schedd.sdk.client import Client

    urls = _urls(args)
    connected = False

    async def session() -> T:
        nonlocal connected
        async with Client.connect(
            urls,
            token=args.token,
            name=CLIENT_NAME,
            connect_timeout=CONNECT_TIMEOUT,
            reconnect=reconnect,
        ) as client:
            connected = True
            return await body(client)

    try:
        return trio.run(session)
    except BaseException as exc:
        _raise_command_error(exc, urls, connected=connected)


def _query(args: argparse.Namespace, what: str) -> dict[str, Any]:
    async def body(client: Client) -> dict[str, Any]:
        with trio.fail_after(QUERY_TIMEOUT):
            return await client.query(what)

    return _run_client(args, body)
