"""Opens many keep-alive connections, sends one request on each, then holds them idle.

usage: idle_clients.py TARGET_IP PORT SOURCE_IP COUNT STOP_FILE MAX_HOLD_S

Every connection is bound to SOURCE_IP (one process per source address keeps each
process within its ephemeral ports and RLIMIT_NOFILE). After all connections are open it
prints "open=N failed=F" and holds them until STOP_FILE exists or MAX_HOLD_S passed,
then closes them all and prints "closed=N". It always stops by itself.
"""
import asyncio
import os
import resource
import sys
import time

CONNECT_PARALLEL = 256


async def one(target, port, source, i, sem, held):
    async with sem:
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(target, port, local_addr=(source, 0)), 30
            )
            w.write(f"GET /idle/{i} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await asyncio.wait_for(r.readexactly(length), 30)
            held.append(w)
            return True
        except Exception:
            return False


async def main():
    target, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    count, stop_file, max_hold = int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sem = asyncio.Semaphore(CONNECT_PARALLEL)
    held = []
    results = await asyncio.gather(*(one(target, port, source, i, sem, held) for i in range(count)))
    ok = sum(results)
    print(f"open={ok} failed={count - ok}", flush=True)
    deadline = time.monotonic() + max_hold
    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    for w in held:
        w.close()
    print(f"closed={len(held)}", flush=True)


asyncio.run(main())
