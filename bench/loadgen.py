"""A small HTTP/1.1 load generator on asyncio streams, for the benchmarks.

Fixed-rate runs time each request from the moment it was due, not from when
it was sent, so a stalled server shows up in the latencies (no coordinated
omission). Saturation runs keep `connections` requests in flight. A body is
bytes, or a function making each request's (raw transactions: a new
transaction id every time, or the server answers a retry from its record).
An https URL is called over TLS with the given ssl context (the lab's CA).
"""

import asyncio
import time
from urllib.parse import urlparse


class Connection:
    def __init__(self, url, tls=None):
        u = urlparse(url)
        https = u.scheme == "https"
        self.host, self.port, self.path = u.hostname, u.port or (443 if https else 80), u.path or "/"
        self.tls = (tls or True) if https else None
        self.reader = self.writer = None

    async def request(self, body, content_type="application/json"):
        """(status, response body); reconnects once if the server closed the connection."""
        for attempt in (1, 2):
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port, ssl=self.tls)
                self.writer.write(
                    f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await self.writer.drain()
                status_line = await self.reader.readline()
                if not status_line:
                    raise ConnectionResetError("closed")
                status = int(status_line.split()[1])
                length, close = 0, False
                while True:
                    line = await self.reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "connection" and "close" in value.lower():
                        close = True
                payload = await self.reader.readexactly(length)
                if close:
                    self.close()
                return status, payload
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                self.close()
                if attempt == 2:
                    return None, b""

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def fixed_rate(url, body, rate, seconds, connections=64, on_response=None, tls=None, grace=10.0):
    """Send `rate` requests/s for `seconds`; returns latencies (s) and failures. Requests
    still unanswered `grace` s after the last one was due count as failed: a server that
    cannot keep up would otherwise hold the run for its whole backlog."""
    pool = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(Connection(url, tls))
    latencies, failures = [], 0
    start = time.perf_counter()

    async def one(due):
        nonlocal failures
        conn = await pool.get()
        try:
            status, payload = await conn.request(body() if callable(body) else body)
        finally:
            pool.put_nowait(conn)
        if status != 200:
            failures += 1
        else:
            latencies.append(time.perf_counter() - due)
        if on_response:
            on_response(status, payload)

    tasks = []
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    _, unanswered = (await asyncio.wait(tasks, timeout=max(0.0, start + seconds + grace - time.perf_counter()))
                     if tasks else (set(), set()))
    for task in unanswered:
        task.cancel()
    await asyncio.gather(*unanswered, return_exceptions=True)
    return latencies, failures + len(unanswered)


async def saturate(url, body, seconds, connections=16, tls=None):
    """As many requests as `connections` clients can send in `seconds`: (throughput, latencies, failures)."""
    latencies, failures, end = [], 0, time.perf_counter() + seconds

    async def client():
        nonlocal failures
        conn = Connection(url, tls)
        while time.perf_counter() < end:
            sent = body() if callable(body) else body
            t0 = time.perf_counter()
            status, _ = await conn.request(sent)
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                failures += 1
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return len(latencies) / (time.perf_counter() - t0), latencies, failures
