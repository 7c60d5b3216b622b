"""A TCP proxy that can play a server outage: put it in front of PostgreSQL, give the system under
test its port, and `cut()` it. Only the connections through the proxy see the outage; the server
itself, shared by the whole test session, is never touched."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# SO_LINGER on, timeout 0: close() sends RST instead of FIN, as a crashed server's host does.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection abruptly: RST, nothing buffered is sent."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    writer.transport.abort()


class TcpProxy:
    """Forwards 127.0.0.1:`port` to an upstream server. While cut, every connection is reset on
    arrival; cutting also resets every open connection, on both sides."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self.is_cut = False
        # Connections reset because of an outage: open ones cut, and new ones refused.
        self.connections_dropped = 0
        self.connections_refused = 0
        self._server: asyncio.Server | None = None
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    @classmethod
    @asynccontextmanager
    async def running(cls, upstream_host: str, upstream_port: int) -> AsyncIterator[TcpProxy]:
        """A proxy listening on a free port of 127.0.0.1, closed afterwards."""
        proxy = cls(upstream_host, upstream_port)
        proxy._server = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
        proxy.port = proxy._server.sockets[0].getsockname()[1]
        try:
            yield proxy
        finally:
            proxy._server.close()
            proxy.cut()
            for task in list(proxy._pumps):
                task.cancel()
            await asyncio.gather(*proxy._pumps, return_exceptions=True)
            await proxy._server.wait_closed()

    def cut(self) -> None:
        """The server goes away: open connections are reset, new ones refused until `restore()`."""
        self.is_cut = True
        for client, upstream in list(self._open):
            self.connections_dropped += 1
            _reset(client)
            _reset(upstream)
        self._open.clear()

    def restore(self) -> None:
        """The server is back: new connections go through again."""
        self.is_cut = False

    async def _accept(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        if self.is_cut:
            self.connections_refused += 1
            _reset(client)
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            _reset(client)
            return
        if self.is_cut:  # cut while the upstream connection was being opened
            self.connections_refused += 1
            _reset(client)
            _reset(upstream)
            return
        pair = (client, upstream)
        self._open.add(pair)
        for source, sink in ((client_reader, upstream), (upstream_reader, client)):
            task = asyncio.create_task(self._pump(source, sink, pair))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            # One side closed: close the other, so each end sees what the other did.
            if pair in self._open:
                self._open.discard(pair)
                for writer in pair:
                    writer.close()
