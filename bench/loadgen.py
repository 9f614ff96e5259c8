"""HTTP load for the serving benchmarks: open loop (requests leave on a fixed schedule whatever the
server does) and closed loop (one client, next request when the last is answered).

Raw HTTP/1.1 over keep-alive connections with asyncio, so the client costs little of the 2 cores it
shares with TorchServe. Open-loop latency counts from each request's *scheduled* send time, so a
stalled server shows up as latency instead of being hidden by a slowed client (no coordinated
omission). Every answer is classified: ``ok``, the handler's error ``kind`` (4xx/500/503 JSON, e.g.
``overloaded`` when it sheds load), ``worker_died``, ``queue_full`` (TorchServe's own 503), ``auth``,
``timeout`` or ``connection``. Transient
failures can be retried with the product client's backoff, and both the first attempt's and the
final outcome are kept.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hap_runtime.keyfile import refused
from serving.keys import KeyRing
from serving.server import torchserve_failure


@dataclass
class Outcome:
    scheduled: float  # seconds from the start of the run
    latency_ms: float
    status: int  # 0 when no HTTP answer came
    kind: str
    attempts: int = 1
    first_kind: str = ""


def classify(status: int, body: bytes) -> str:
    if status == 200:
        return "ok"
    text = body[:400].decode("utf-8", "replace")
    if refused(status, body):
        return "auth"
    if kind := torchserve_failure(status, text):
        return kind
    try:
        return str(json.loads(text).get("kind") or f"http_{status}")
    except ValueError:
        return f"http_{status}"


TRANSIENT = {"worker_died", "overloaded", "queue_full", "connection"}


@dataclass
class Target:
    host: str
    port: int
    path: str
    keys: KeyRing

    @classmethod
    def for_home(cls, home: Path, inference_url: str, management_url: str, path: str) -> Target:
        host, _, port = inference_url.removeprefix("http://").partition(":")
        return cls(host, int(port), path, KeyRing(home, management_url, inference_url))


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


@dataclass
class LoadClient:
    """Sends pre-encoded bodies to ``target``; ``retries`` transient failures with 0.2 s, 0.4 s...
    backoff (0 = report the first answer)."""

    target: Target
    bodies: list[bytes]
    timeout_s: float = 10.0
    retries: int = 0
    idle: list[_Conn] = field(default_factory=list)

    def _request(self, body: bytes, key: str) -> bytes:
        t = self.target
        head = (f"POST {t.path} HTTP/1.1\r\nHost: {t.host}:{t.port}\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
        return head.encode() + body

    async def _once(self, body: bytes) -> tuple[int, bytes]:
        key = self.target.keys.key("inference")
        conn = self.idle.pop() if self.idle else None
        if conn is None:
            reader, writer = await asyncio.open_connection(self.target.host, self.target.port)
            conn = _Conn(reader, writer)
        conn.writer.write(self._request(body, key))
        await conn.writer.drain()
        status_line = await conn.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        headers = {}
        while (line := await conn.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            data = b""
            while size := int((await conn.reader.readuntil(b"\r\n")).strip(), 16):
                data += await conn.reader.readexactly(size + 2)
            await conn.reader.readuntil(b"\r\n")
        else:
            data = await conn.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            conn.writer.close()
        else:
            self.idle.append(conn)
        if refused(status, data):  # rotated: re-read, once
            self.target.keys.refresh("inference", key)
            return await self._once(body)
        return status, data

    async def send(self, i: int) -> tuple[int, str, int, str]:
        """One request with retries: (status, kind, attempts, first attempt's kind)."""
        first = ""
        for attempt in range(self.retries + 1):
            try:
                status, data = await asyncio.wait_for(self._once(self.bodies[i % len(self.bodies)]), self.timeout_s)
                kind = classify(status, data)
            except TimeoutError:
                status, kind = 0, "timeout"
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status, kind = 0, "connection"
            first = first or kind
            if kind not in TRANSIENT or attempt == self.retries:
                return status, kind, attempt + 1, first
            await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        for c in self.idle:
            c.writer.close()
        self.idle.clear()


async def _open_loop(client: LoadClient, rate: float, seconds: float,
                     events: list[tuple[float, str, Callable[[], object]]]) -> tuple[list[Outcome], list[dict]]:  # fmt: skip
    loop = asyncio.get_running_loop()
    start = loop.time()
    outcomes: list[Outcome] = []
    log: list[dict] = []
    tasks: list[asyncio.Future] = []

    async def one(i: int, at: float) -> None:
        status, kind, attempts, first = await client.send(i)
        outcomes.append(Outcome(at, (loop.time() - start - at) * 1e3, status, kind, attempts, first))

    async def run_events() -> None:
        for pause, name, fn in events:  # one after another, each ``pause`` s after the last ended
            await asyncio.sleep(pause)
            t0 = loop.time() - start
            try:
                result, error = await loop.run_in_executor(None, fn), None
            except Exception as exc:  # an event that fails is a finding, not a crash of the benchmark
                result, error = None, repr(exc)
            log.append({"event": name, "start": t0, "end": loop.time() - start, "result": result, "error": error})

    runner = asyncio.ensure_future(run_events())
    i = 0
    while True:
        at = i / rate
        if at >= seconds and runner.done():
            break
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, at)))
        i += 1
    await asyncio.gather(runner, *tasks)
    return sorted(outcomes, key=lambda o: o.scheduled), log


def open_loop(client: LoadClient, rate: float, seconds: float,
              events: list[tuple[float, str, Callable[[], object]]] = ()) -> tuple[list[Outcome], list[dict]]:  # fmt: skip
    """``rate`` requests per second for at least ``seconds``, and until ``events`` (pause before it,
    name, function) have run one after another in a thread."""
    try:
        return asyncio.run(_open_loop(client, rate, seconds, list(events)))
    finally:
        client.idle.clear()


def closed_loop(client: LoadClient, n: int) -> list[Outcome]:
    """One client, ``n`` requests back to back over one kept-alive connection."""

    async def run() -> list[Outcome]:
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            status, kind, attempts, first = await client.send(i)
            out.append(Outcome(0.0, (time.perf_counter() - t0) * 1e3, status, kind, attempts, first))
        return out

    try:
        return asyncio.run(run())
    finally:
        client.idle.clear()


def summary(outcomes: list[Outcome], seconds: float | None = None) -> dict:
    """p50/p95/p99 of answered requests, throughput and failures by kind."""
    ok = [o.latency_ms for o in outcomes if o.kind == "ok"]
    pct = np.percentile(ok, [50, 95, 99]).round(1).tolist() if ok else [None] * 3
    return {
        "requests": len(outcomes),
        "ok": len(ok),
        "failed": len(outcomes) - len(ok),
        "failed_by_kind": dict(Counter(o.kind for o in outcomes if o.kind != "ok")),
        "retried": sum(o.attempts > 1 for o in outcomes),
        "first_attempt_failed": sum(o.first_kind != "ok" for o in outcomes),
        "p50_ms": pct[0],
        "p95_ms": pct[1],
        "p99_ms": pct[2],
        **({"answered_per_s": round(len(ok) / seconds, 1)} if seconds else {}),
    }


class BenchServer:
    """A TorchServe of its own (temporary home, ports ``$HAP_SERVE_PORT``+10..+14) serving the
    workspace's production archive, so a benchmark neither disturbs nor depends on the demo server."""

    def __init__(self, ws, cfg, offset: int = 10) -> None:
        import os
        import tempfile

        from registry.store import Registry
        from serving.server import LocalTorchServe, Ports

        self.ws, self.cfg = ws, cfg
        prod = Registry(ws).production()
        if not prod:
            raise SystemExit("no production model: run `make demo` first")
        self.version = prod["version"]
        self.tmp = tempfile.TemporaryDirectory(prefix="hap-bench-")
        base = int(os.environ.get("HAP_SERVE_PORT", "8080")) + offset
        self.server = LocalTorchServe(
            Path(self.tmp.name), Ports(base, base + 1, base + 2, base + 3, base + 4), cfg.serving
        )

    def __enter__(self):
        from registry.store import Registry
        from serving.archive import build_archive, mar_name

        build_archive(Registry(self.ws).version_dir(self.version), self.version, self.cfg, self.server.model_store)
        self.server.start()
        self.server.register(mar_name(self.version))
        self.server.set_default(self.version)
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()
        self.tmp.cleanup()

    def target(self, path: str = "/predictions/hap") -> Target:
        s = self.server
        return Target.for_home(s.home, s.inference_url, s.management_url, path)


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """User+system CPU seconds so far of each named group of processes (their own threads, not
    their children)."""
    import psutil

    out = {}
    for name, group in pids.items():
        out[name] = 0.0
        for pid in group:
            try:
                times = psutil.Process(pid).cpu_times()
                out[name] += times.user + times.system
            except (psutil.Error, ValueError):
                continue
    return out
