"""A tiny HTTP/1.x server for the reliability tests, misbehaving on purpose.

usage: toy_server.py MODE HOST PORT [--reuseport]

MODE
  answer   answers every request head with a fixed 200 (keep-alive, pipelining ok)
  hang     accepts and reads, never answers
  slow     answers each request after 3 seconds
  garbage  answers each request with random bytes that are not HTTP

Request bodies are read and thrown away (only heads are answered), so a never-ending
body costs this server no memory. No idle timeout: idle connections stay open until the
client closes them. asyncio holds tens of thousands of connections in one process; with
--reuseport several processes can share the port (each process is capped by
RLIMIT_NOFILE, which is raised to its hard limit here).
"""
import asyncio
import os
import resource
import sys

RESP = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
# Bytes kept while looking for the end of a head; beyond this the oldest are dropped.
MAX_BUF = 4 << 20
SLOW_S = 3.0


def head_end(buf):
    """Index just past the first head terminator (CRLF or bare LF), or -1."""
    ends = [i + n for i, n in ((buf.find(b"\r\n\r\n"), 4), (buf.find(b"\n\n"), 2)) if i >= 0]
    return min(ends) if ends else -1


class Conn(asyncio.Protocol):
    def __init__(self, mode):
        self.mode = mode
        self.buf = bytearray()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf.extend(data)
        while True:
            end = head_end(self.buf)
            if end < 0:
                break
            del self.buf[:end]
            self.answer()
        if len(self.buf) > MAX_BUF:
            del self.buf[: len(self.buf) - 4]

    def answer(self):
        if self.mode == "hang":
            return
        if self.mode == "slow":
            asyncio.get_running_loop().call_later(SLOW_S, self.write, RESP)
        elif self.mode == "garbage":
            self.write(b"\x16\x03\x01" + os.urandom(253))
        else:
            self.write(RESP)

    def write(self, data):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode not in ("answer", "hang", "slow", "garbage"):
        sys.exit(f"unknown mode {mode}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Conn(mode), host, port, backlog=4096, reuse_port="--reuseport" in sys.argv
    )
    print(f"toy server {mode} on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
