"""A small, real HTTP forward proxy for the tests: absolute-URI requests and CONNECT.

It does what a corporate proxy does for plain ``http://`` targets: reads a request
whose target is an absolute URI (``GET http://host:port/path HTTP/1.1``), opens a
connection to that host, sends the request on with an origin-form target, and relays
the answer back; one request per connection to the target (``Connection: close``),
while the client's connection to the proxy is kept alive. ``CONNECT host:port`` opens
a tunnel and relays bytes both ways. ``Proxy-Authorization`` is required when the proxy
has credentials, and stripped before forwarding, as a real proxy does.

Every request forwarded and every tunnel opened is counted, with its target.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import urllib.parse
from dataclasses import dataclass, field

__all__ = ["ForwardProxy"]

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
}


@dataclass
class ForwardProxy:
    """``await proxy.start()`` listens on 127.0.0.1:<ephemeral>; ``url`` aims at it."""

    user: str | None = None
    password: str | None = None
    #: "METHOD http://host:port/path" of every request forwarded, in order.
    forwarded: list[str] = field(default_factory=list)
    #: "host:port" of every CONNECT tunnel opened.
    tunnels: list[str] = field(default_factory=list)
    #: Requests refused with 407 for missing or wrong credentials.
    refused: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """The proxy's URL, with its credentials when it has some."""
        auth = f"{self.user}:{self.password}@" if self.user is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    async def start(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request from the client; False when its connection should end."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
        if not self._authorized(headers):
            self.refused += 1
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
            )
            await writer.drain()
            return True
        if method == "CONNECT":
            await self._tunnel(target, reader, writer)
            return False
        url = urllib.parse.urlsplit(target)
        if url.scheme != "http" or not url.hostname:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return False
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        body = await reader.readexactly(length) if length else b""
        self.forwarded.append(f"{method} {target}")
        path = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
        kept = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
        out = [f"{method} {path} {version}", *(f"{k}: {v}" for k, v in kept)]
        out.append("Connection: close")
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
        try:
            up_writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
            await up_writer.drain()
            answer = await up_reader.read()  # the target closes: the whole answer
        finally:
            up_writer.close()
        writer.write(_keep_alive(answer))
        await writer.drain()
        return True

    async def _tunnel(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, _, port = target.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        self.tunnels.append(target)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while block := await src.read(1 << 16):
                    dst.write(block)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.write_eof()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            up_writer.close()

    def _authorized(self, headers: list[tuple[str, ...]]) -> bool:
        if self.user is None:
            return True
        want = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        given = [v for k, v in headers if k.lower() == "proxy-authorization"]
        return given == [f"Basic {want}"]


def _keep_alive(answer: bytes) -> bytes:
    """The target's answer with ``Connection: close`` taken out, so the client may keep its
    connection to the proxy. The answer must carry its own length (Content-Length or
    chunked); the sandbox's always do."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join(lines) + sep + body
