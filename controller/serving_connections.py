"""The metrics port's connections, accepted within bounds before their TLS handshake costs memory.

The port listens on the host network, so anyone who reaches the node can open connections to it:
`GuardedListener` accepts them itself, counts them, and closes or refuses the ones past ServingLimits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from typing import cast

from controller.secure_serving import (
    ACCEPT_RETRY_SECONDS,
    CLOSED_IDLE,
    DROPPED_HANDSHAKE,
    HANDSHAKE_TIMEOUT,
    LISTEN_BACKLOG,
    REFUSED_CONNECTION_LIMIT,
    ServingLimits,
    ignore_refusal,
)

logger = logging.getLogger("nodeipam.server")


# -- Connections ---------------------------------------------------------------------


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Sockets bound and listening on every address `host` resolves to, as asyncio's create_server does (IPv6 only
    on IPv6); raises OSError (the port is taken, say) with none left open."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, protocol, _, address in dict.fromkeys(found):
            listening = socket.socket(family, kind, protocol)
            sockets.append(listening)
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listening.bind(address)
            listening.listen(LISTEN_BACKLOG)
    except OSError:
        for listening in sockets:
            listening.close()
        raise
    return sockets


class GuardedListener:
    """Accepts the port's TLS connections within ServingLimits, for an HTTP protocol (aiohttp's, in server.py).

    Accepting here rather than through asyncio's server decides before the TLS handshake, which is what
    costs memory. Past `connections` the connection idle longest is closed for the new one; only when
    every connection is serving a request is the new one refused (reset, before any TLS). Past
    `handshakes` the oldest handshake in progress is dropped for the new one.
    """

    def __init__(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext,
        limits: ServingLimits,
        refused: Callable[[str], None] = ignore_refusal,
    ) -> None:
        self._protocol_factory = protocol_factory
        self._ssl_context = ssl_context
        self.limits = limits
        self._refused = refused
        self._sockets: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._handshakes: dict[asyncio.Task[None], None] = {}  # oldest first
        self._connections: dict[asyncio.Transport, None] = {}  # least recently active first
        self._serving: set[asyncio.BaseTransport] = set()  # connections with a request in progress

    @property
    def ports(self) -> list[int]:
        """The ports listened on (the one asked for, or those the system chose for port 0)."""
        return [int(listening.getsockname()[1]) for listening in self._sockets]

    @property
    def open_connections(self) -> int:
        """Connections held, handshakes in progress included."""
        return len(self._handshakes) + len(self._connections)

    async def start(self, host: str, port: int, sockets: Sequence[socket.socket] = ()) -> None:
        """Listen on every address `host` resolves to, as asyncio's create_server does (IPv6 only on IPv6).

        `sockets`: already listening (bound by another process, which passed them on); host and port are then unused.
        """
        if not sockets:
            loop = asyncio.get_running_loop()
            sockets = await loop.run_in_executor(None, listening_sockets, host, port)
        for listening in sockets:
            listening.setblocking(False)
        self._sockets = list(sockets)
        self._acceptors = [asyncio.ensure_future(self._accept(listening)) for listening in self._sockets]

    async def close(self) -> None:
        """Stop accepting and drop the handshakes in progress; open connections are the HTTP server's to close."""
        tasks = [*self._acceptors, *self._handshakes]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for listening in self._sockets:
            listening.close()
        self._sockets.clear()
        self._acceptors.clear()

    @contextlib.contextmanager
    def serving(self, transport: asyncio.BaseTransport | None) -> Iterator[None]:
        """While a request is served on `transport`: it is not closed to make room, then counts as the most recently active."""
        connection = cast(asyncio.Transport, transport)
        if connection not in self._connections:  # gone already, or not one of ours (a test server's)
            yield
            return
        self._serving.add(connection)
        try:
            yield
        finally:
            self._serving.discard(connection)
            if connection in self._connections:
                del self._connections[connection]
                self._connections[connection] = None

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _ = await loop.sock_accept(listening)
            except OSError as error:
                logger.warning("the metrics port could not accept a connection: %s", error)
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            try:
                self._admit(connection)
            except Exception:  # whatever one connection does, the port keeps accepting
                logger.exception("could not take a connection on the metrics port")
                connection.close()

    def _admit(self, connection: socket.socket) -> None:
        """Start the handshake of a new connection, or refuse it: before any TLS, so it costs next to nothing."""
        if len(self._handshakes) >= self.limits.handshakes:
            oldest = next(iter(self._handshakes))
            del self._handshakes[oldest]
            oldest.cancel()
            self._refused(DROPPED_HANDSHAKE)
        elif self.open_connections >= self.limits.connections and not self._close_an_idle_connection():
            _reset(connection)
            self._refused(REFUSED_CONNECTION_LIMIT)
            return
        connection.setblocking(False)
        handshake = asyncio.ensure_future(self._handshake(connection))
        self._handshakes[handshake] = None
        handshake.add_done_callback(functools.partial(self._handshake_done, connection))

    async def _handshake(self, connection: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await loop.connect_accepted_socket(
                lambda: _Tracked(self._protocol_factory(), self._opened, self._lost),
                connection,
                ssl=self._ssl_context,
                ssl_handshake_timeout=self.limits.handshake_timeout,
                ssl_shutdown_timeout=self.limits.tls_shutdown_timeout,
            )
        except OSError as error:  # a failed or timed-out handshake (ssl.SSLError is an OSError)
            connection.close()
            if loop.time() - started >= self.limits.handshake_timeout:
                self._refused(HANDSHAKE_TIMEOUT)
            logger.debug("TLS handshake on the metrics port failed: %s", error)

    def _handshake_done(self, connection: socket.socket, handshake: asyncio.Task[None]) -> None:
        self._handshakes.pop(handshake, None)
        if handshake.cancelled():  # dropped, perhaps before it began: the socket is still ours to close
            connection.close()
        elif handshake.exception() is not None:
            logger.error("TLS handshake on the metrics port: %r", handshake.exception())
            connection.close()

    def _opened(self, transport: asyncio.Transport) -> None:
        self._connections[transport] = None

    def _lost(self, transport: asyncio.Transport) -> None:
        self._connections.pop(transport, None)
        self._serving.discard(transport)

    def _close_an_idle_connection(self) -> bool:
        """Abort the connection idle longest, one already closing first; False when all are serving requests."""
        idle = [transport for transport in self._connections if transport not in self._serving]
        if not idle:
            return False
        chosen = next((transport for transport in idle if transport.is_closing()), idle[0])
        del self._connections[chosen]  # its connection_lost follows once the socket is closed
        chosen.abort()
        self._refused(CLOSED_IDLE)
        return True


def _reset(connection: socket.socket) -> None:
    """Close with a TCP reset: nothing kept for the refused client, no TIME_WAIT."""
    with contextlib.suppress(OSError):
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    connection.close()


class _Tracked(asyncio.Protocol):
    """The HTTP protocol of one connection, with the listener told when the connection opens and when it is gone."""

    def __init__(
        self,
        inner: asyncio.Protocol,
        opened: Callable[[asyncio.Transport], None],
        lost: Callable[[asyncio.Transport], None],
    ) -> None:
        self.inner = inner
        self._opened = opened
        self._lost = lost
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a TLS stream: asyncio's _SSLProtocolTransport
        self._opened(self._transport)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._lost(self._transport)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
