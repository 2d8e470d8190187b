"""Sends a hostile HTTP/1.x corpus over real connections, each case on its own
connection followed by a normal request on a fresh one.

usage: hostile_corpus.py TARGET_IP PORT BODY_MIB

Prints one line per case, then "cases=N normal_ok=K". The never-ending chunked body stops
after BODY_MIB MiB (the client closes the connection without the last chunk).
"""
import os
import socket
import sys

TARGET, PORT, BODY_MIB = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
H = b"Host: legacy\r\n"


def cases():
    yield "cl+te", b"POST /h/clte HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    yield "te+cl", b"POST /h/tecl HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    yield "dup-cl", b"POST /h/dupcl HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 7\r\n\r\nhello12"
    yield "negative-cl", b"POST /h/negcl HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n"
    yield "huge-cl", b"POST /h/hugecl HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999\r\n\r\nabc"
    yield "obs-fold", b"GET /h/fold HTTP/1.1\r\n" + H + b"X-Folded: a\r\n  b\r\n\r\n"
    yield "bare-lf", b"GET /h/lf HTTP/1.1\nHost: legacy\n\n"
    yield "nul-in-line", b"GET /h/\x00nul HTTP/1.1\r\n" + H + b"\r\n"
    yield "te-gzip-only", b"POST /h/tegzip HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nxxxx"
    yield "bad-chunk-size", b"POST /h/badchunk HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    yield "chunk-size-overflow", b"POST /h/chunkovf HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"
    yield "1MiB-header-line", b"GET /h/bigline HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    yield "10k-headers", b"GET /h/many HTTP/1.1\r\n" + H + b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)) + b"\r\n"
    yield "binary-garbage", os.urandom(4096)
    yield "endless-chunked", None


def send_case(name, data):
    s = socket.create_connection((TARGET, PORT), timeout=10)
    try:
        if data is not None:
            s.sendall(data)
        else:
            s.sendall(b"POST /h/endless HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"10000\r\n" + b"z" * 0x10000 + b"\r\n"
            for _ in range(BODY_MIB * 16):
                s.sendall(chunk)
        s.settimeout(0.5)
        try:
            s.recv(65536)
        except OSError:
            pass
    except OSError as e:
        print(f"{name}: send error {e}", flush=True)
    finally:
        s.close()


def normal(i):
    with socket.create_connection((TARGET, PORT), timeout=10) as s:
        s.sendall(f"GET /normal/{i} HTTP/1.1\r\nHost: legacy\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\nok" not in data:
            d = s.recv(65536)
            if not d:
                break
            data += d
        return data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok")


n = ok = 0
for name, data in cases():
    send_case(name, data)
    good = normal(n)
    print(f"{name}: normal after it {'ok' if good else 'FAILED'}", flush=True)
    n += 1
    ok += good
print(f"cases={n} normal_ok={ok}", flush=True)
