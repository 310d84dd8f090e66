"""Foundation benchmark: s3orch against the backend it fronts, side by side, in one run.

Why: s3orch sits in the data path of every byte, so its cost has to be known as a
ratio against talking to the same backend directly, on the same machine, in the
same run (absolute figures from different machines or runs say little). It also
has to stream: the peak memory while moving a 1 GiB object must stay bounded.

Run on demand, never from the test suite::

    python benchmarks/bench_foundation.py            # full run, about 2-3 minutes
    python benchmarks/bench_foundation.py --quick    # smoke run, about 30 s
    python benchmarks/bench_foundation.py --backend local --skip-1g --json out.json

Every server runs in its own process on a free 127.0.0.1 port (moto's server
mode as the S3 backend, ``twistd -n s3orch`` in front of it); all processes and
temporary files are removed at the end, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import boto3
from botocore.config import Config as BotoConfig

from s3orch.testing.moto_server import MotoServer
from s3orch.testing.s3orch_process import S3OrchProcess

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

ACCESS_KEY = "AKIAS3ORCHBENCH00001"
SECRET_KEY = "s3orch-bench-secret"
VIRTUAL_BUCKET = "bench"
BACKEND_BUCKET = "s3orch-backend"  # the moto bucket s3orch writes to
DIRECT_BUCKET = "direct"  # the moto bucket the baseline writes to
REGION = "us-east-1"
READ_CHUNK = 1 * MiB
FILE_CHUNK = 8 * MiB
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

TARGET_SMALL = 0.5
TARGET_LARGE = 0.7
TARGET_RSS_MB = 150.0


@dataclass(frozen=True)
class Settings:
    """What one run measures; ``--quick`` shrinks counts and sizes (1 GiB becomes 256 MiB)."""

    backend: str
    small_ops: int
    small_size: int
    concurrency: int
    large_size: int
    large_reps: int
    huge_size: int
    skip_huge: bool
    json_path: str | None


@dataclass
class Row:
    """One line of the result table; ``direct`` is None where there is no baseline."""

    operation: str
    unit: str
    direct: float | None
    s3orch: float
    target: float | None
    kind: str  # "ratio": s3orch/direct >= target; "max": s3orch <= target; "info"
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.direct is None or self.direct == 0:
            return None
        return self.s3orch / self.direct

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        if self.kind == "ratio":
            return self.ratio is not None and self.ratio >= self.target
        return self.s3orch <= self.target


S = TypeVar("S")

# -- clients and targets -------------------------------------------------------------------


def s3_client(endpoint: str, access_key: str, secret_key: str) -> Any:
    """A fresh boto3 client; boto3 clients are not to be shared between threads."""
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
            max_pool_connections=4,
            connect_timeout=10,
            read_timeout=300,
        ),
    )


class Target:
    """Somewhere objects are put and got: an S3 endpoint, or a plain directory."""

    label = ""

    def new_worker(self) -> Worker:
        raise NotImplementedError


class Worker:
    """One client (one thread's worth); S3 workers hold their own boto3 client."""

    def put_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def put_file(self, key: str, path: Path) -> None:
        raise NotImplementedError

    def get(self, key: str) -> int:
        """Read the object in chunks, dropping them; return the byte count."""
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError


class S3Target(Target):
    def __init__(self, label: str, endpoint: str, bucket: str, access: str, secret: str) -> None:
        self.label = label
        self.endpoint = endpoint
        self.bucket = bucket
        self.access = access
        self.secret = secret

    def new_worker(self) -> Worker:
        return S3Worker(s3_client(self.endpoint, self.access, self.secret), self.bucket)


class S3Worker(Worker):
    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def put_file(self, key: str, path: Path) -> None:
        # botocore reads the file to sign it, rewinds, then streams it: never whole in memory.
        with path.open("rb") as body:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentLength=path.stat().st_size
            )

    def get(self, key: str) -> int:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        total = 0
        try:
            for chunk in body.iter_chunks(READ_CHUNK):
                total += len(chunk)
        finally:
            body.close()
        return total

    def get_bytes(self, key: str) -> bytes:
        data: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return data


class DirectoryTarget(Target):
    """The ``--backend local`` baseline: plain file writes and reads, no fsync, no HTTP."""

    def __init__(self, root: Path) -> None:
        self.label = "direct (plain files)"
        self.root = root

    def new_worker(self) -> Worker:
        return DirectoryWorker(self.root)


class DirectoryWorker(Worker):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._path(key).open("wb") as f:
            f.write(data)

    def put_file(self, key: str, path: Path) -> None:
        shutil.copyfile(path, self._path(key))

    def get(self, key: str) -> int:
        total = 0
        with (self.root / key).open("rb") as f:
            while chunk := f.read(READ_CHUNK):
                total += len(chunk)
        return total

    def get_bytes(self, key: str) -> bytes:
        return (self.root / key).read_bytes()


# -- measurements --------------------------------------------------------------------------


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds spent by each process of the run, so a phase shows where its time went.

    The benchmark client counts too: boto3 costs milliseconds of CPU per
    request, and on a small machine the client competes with the servers.
    """

    def __init__(self, pids: dict[str, int | str]) -> None:
        self.pids = dict(pids)

    def snapshot(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    @staticmethod
    def since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: round(after[name] - before[name], 3) for name in before}


@dataclass
class Phase:
    """One timed phase: what moved, how long it took, and the CPU each process spent."""

    name: str
    target: str
    ops: int
    nbytes: int
    wall_s: float
    cpu_s: dict[str, float]


def run_concurrent(
    target: Target,
    concurrency: int,
    count: int,
    op: Callable[[Worker, int], None],
    stop: threading.Event,
    meter: CpuMeter,
) -> tuple[float, dict[str, float]]:
    """Run ``op`` ``count`` times spread over ``concurrency`` threads; wall seconds and CPU.

    Clients are created and warmed up (one untimed op each) before the clock
    starts, so connection setup and botocore's lazy loading are not measured.
    """
    workers = [target.new_worker() for _ in range(concurrency)]
    shares = [range(i, count, concurrency) for i in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)

    def run(worker: Worker, indices: range) -> None:
        try:
            op(worker, indices[0])  # warm-up, repeated inside the timed run
        finally:
            barrier.wait()
        for i in indices:
            if stop.is_set():
                return
            op(worker, i)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        try:
            futures = [pool.submit(run, w, s) for w, s in zip(workers, shares, strict=True)]
            barrier.wait()
            cpu = meter.snapshot()
            start = time.perf_counter()
            for f in futures:
                f.result()
            elapsed = time.perf_counter() - start
            cpu = CpuMeter.since(cpu, meter.snapshot())
        except BaseException:
            stop.set()
            barrier.abort()
            raise
    return elapsed, cpu


def small_objects(
    target: Target, settings: Settings, stop: threading.Event, meter: CpuMeter
) -> list[Phase]:
    """``small_ops`` PUTs, then as many GETs (each body checked), by ``concurrency`` clients."""
    payload = os.urandom(settings.small_size)
    size = settings.small_size

    def put(worker: Worker, i: int) -> None:
        worker.put_bytes(f"small/{i:06d}", payload)

    def get(worker: Worker, i: int) -> None:
        if worker.get_bytes(f"small/{i:06d}") != payload:
            raise RuntimeError(f"{target.label}: small/{i:06d} came back different")

    phases = []
    for name, op in (("PUT", put), ("GET", get)):
        wall, cpu = run_concurrent(
            target, settings.concurrency, settings.small_ops, op, stop, meter
        )
        n = settings.small_ops
        phases.append(Phase(f"{name} {size // KiB} KiB", target.label, n, n * size, wall, cpu))
    return phases


def large_objects(
    target: Target, path: Path, reps: int, meter: CpuMeter
) -> tuple[list[float], list[float], list[Phase]]:
    """MB/s (10**6 bytes/s) of sequential PUTs and GETs of one large object, per repetition."""
    worker = target.new_worker()
    size = path.stat().st_size
    worker.put_file("warmup", path)  # untimed: first large body, socket buffers, lazy imports
    rates: dict[str, list[float]] = {"PUT": [], "GET": []}
    phases = []
    for name in ("PUT", "GET"):
        cpu = meter.snapshot()
        total = 0.0
        for _ in range(reps):
            start = time.perf_counter()
            if name == "PUT":
                worker.put_file("large", path)
            elif (got := worker.get("large")) != size:
                raise RuntimeError(f"{target.label}: GET returned {got} of {size} bytes")
            elapsed = time.perf_counter() - start
            total += elapsed
            rates[name].append(size / elapsed / 1e6)
        cpu = CpuMeter.since(cpu, meter.snapshot())
        label = f"{name} {size // MiB} MiB"
        phases.append(Phase(label, target.label, reps, reps * size, total, cpu))
    return rates["PUT"], rates["GET"], phases


def proc_status_kib(pid: int, field_name: str) -> int:
    """A ``VmHWM``/``VmRSS`` figure of ``pid`` in KiB, from /proc/<pid>/status.

    VmHWM is the peak resident set size since the process started; it cannot
    be reset, hence a fresh s3orch for the 1 GiB measurement.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} for pid {pid}")


def vmhwm_mb(pid: int) -> float:
    """Peak RSS of ``pid`` so far, in MB (10**6 bytes) like the target."""
    return proc_status_kib(pid, "VmHWM") * 1024 / 1e6


def huge_object(
    pid: int, target: Target, path: Path, meter: CpuMeter
) -> tuple[dict[str, float], list[Phase]]:
    """s3orch's VmHWM after start, after a PUT and after a GET of ``path``; the phases."""
    worker = target.new_worker()
    size = path.stat().st_size
    what = f"{size / GiB:g} GiB"
    hwm = {"after start": vmhwm_mb(pid)}
    phases = []
    for name in ("PUT", "GET"):
        cpu = meter.snapshot()
        start = time.perf_counter()
        if name == "PUT":
            worker.put_file("huge", path)
        elif (got := worker.get("huge")) != size:
            raise RuntimeError(f"s3orch: GET returned {got} of {size} bytes")
        wall = time.perf_counter() - start
        cpu = CpuMeter.since(cpu, meter.snapshot())
        phases.append(Phase(f"{name} {what}", target.label, 1, size, wall, cpu))
        hwm[f"after {what} {name}"] = vmhwm_mb(pid)
    return hwm, phases


def random_file(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes, written in chunks so it is never whole in memory."""
    with path.open("wb") as f:
        left = size
        while left > 0:
            n = min(FILE_CHUNK, left)
            f.write(os.urandom(n))
            left -= n
    return path


# -- setup ---------------------------------------------------------------------------------


def s3orch_config(workdir: Path, backend: dict[str, Any]) -> dict[str, Any]:
    """One backend, SQLite metadata, one bucket with one key pair."""
    return {
        "database": {"driver": "sqlite", "path": str(workdir / "meta.db")},
        "backends": [backend],
        "buckets": [
            {
                "name": VIRTUAL_BUCKET,
                "credentials": [{"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}],
            }
        ],
    }


def backend_entry(settings: Settings, workdir: Path, moto: MotoServer | None) -> dict[str, Any]:
    if settings.backend == "local":
        return {
            "name": "local1",
            "type": "local",
            "path": str(workdir / "backend"),
            "quota_bytes": 0,
        }
    assert moto is not None
    return s3_backend_entry(moto)


def s3_backend_entry(moto: MotoServer, checksum: str = "crc32") -> dict[str, Any]:
    """An ``s3`` backend on moto's ``BACKEND_BUCKET``, the bucket s3orch writes to.

    Its bodies carry a trailing CRC32 (``checksum: crc32``) as boto3's carry a CRC32 header,
    so that moto gets the same checksums through both paths.
    """
    return {
        "name": "moto",
        "type": "s3",
        "endpoint": moto.endpoint,
        "region": REGION,
        "bucket": BACKEND_BUCKET,
        "access_key_id": moto.access_key,
        "secret_access_key": moto.secret_key,
        "force_path_style": True,
        "quota_bytes": 0,
        "checksum": checksum,
    }


@contextlib.contextmanager
def started_moto() -> Iterator[MotoServer]:
    """A running moto server with the s3orch and the direct buckets, stopped however it ends."""
    moto = MotoServer(region=REGION)
    try:
        moto.start()
        moto.make_bucket(BACKEND_BUCKET)
        moto.make_bucket(DIRECT_BUCKET)
        yield moto
    finally:
        moto.stop()


@contextlib.contextmanager
def started_s3orch(workdir: Path, config: dict[str, Any]) -> Iterator[S3OrchProcess]:
    """A running s3orch, stopped by its pid however the block ends."""
    orch = S3OrchProcess(workdir, config)
    try:
        orch.start()
        yield orch
    finally:
        orch.stop()


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so that the cleanup in ``finally`` blocks runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- report --------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_grid(headers: list[str], lines: list[list[str]], left: int = 2) -> None:
    """A plain-text table: the first ``left`` columns left-aligned, the rest right-aligned."""
    widths = [max(len(x) for x in col) for col in zip(headers, *lines, strict=True)]
    sep = "  "
    print(sep.join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    print(sep.join("-" * w for w in widths))
    for line in lines:
        cells = [c.ljust(w) for c, w in zip(line[:left], widths[:left], strict=True)]
        cells += [c.rjust(w) for c, w in zip(line[left:], widths[left:], strict=True)]
        print(sep.join(cells))


def print_results(rows: list[Row], direct_label: str) -> None:
    headers = ["operation", "unit", direct_label, "s3orch", "ratio", "target", "result"]
    lines = []
    for row in rows:
        if row.kind == "ratio":
            target = f">= {row.target:g}"
        elif row.kind == "max":
            target = f"< {row.target:g} MB"
        else:
            target = "-"
        result = {True: "PASS", False: "FAIL", None: "-"}[row.passed]
        ratio = fmt(row.ratio, 2)
        lines.append(
            [row.operation, row.unit, fmt(row.direct), fmt(row.s3orch), ratio, target, result]
        )
    print_grid(headers, lines)


def print_cpu(phases: list[Phase], processes: list[str]) -> None:
    """CPU per op (small objects) or per MiB (large ones), per process, beside the wall time."""
    headers = ["phase", "via", "unit", "wall", *processes, "machine busy"]
    lines = []
    cpus = os.cpu_count() or 1
    for ph in phases:
        per_op = ph.nbytes < MiB * ph.ops
        unit, divisor = ("ms/op", ph.ops) if per_op else ("ms/MiB", ph.nbytes / MiB)
        cells = [fmt(ph.wall_s * 1000 / divisor, 2)]
        cells += [fmt(ph.cpu_s[p] * 1000 / divisor, 2) if p in ph.cpu_s else "-" for p in processes]
        busy = sum(ph.cpu_s.values()) / ph.wall_s / cpus * 100
        lines.append([ph.name, ph.target, unit, *cells, f"{busy:.0f}%"])
    print_grid(headers, lines, left=3)


def row_json(row: Row) -> dict[str, Any]:
    """A result row for the JSON output, with its ratio and verdict spelled out."""
    return {
        **{k: v for k, v in asdict(row).items() if k != "samples" or v},
        "ratio": row.ratio,
        "passed": row.passed,
    }


def describe_machine(machine: dict[str, Any]) -> str:
    """The machine in one line, for a report's header: figures only compare on the same one."""
    return (
        f"{machine['cpu_count']} CPUs ({machine['cpu_model'] or 'unknown'}), "
        f"{machine['mem_total_gib']} GiB RAM, Python {machine['python']}, {machine['platform']}"
    )


def emit_json(result: dict[str, Any], path: str | None) -> None:
    """The raw figures: to ``path`` if given (saying so), else to stdout after the tables."""
    text = json.dumps(result, indent=2)
    if path:
        Path(path).write_text(text + "\n")
        print(f"raw figures written to {path}")
    else:
        print(text)


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total = 0
    with contextlib.suppress(OSError, ValueError):
        mem_total = proc_meminfo_kib("MemTotal")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_gib": round(mem_total / MiB, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def proc_meminfo_kib(name: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- main ----------------------------------------------------------------------------------


def run(settings: Settings) -> dict[str, Any]:
    """Start everything, measure, stop everything; return the raw figures."""
    began = time.perf_counter()
    stop = threading.Event()
    rows: list[Row] = []
    phases: list[Phase] = []
    raw: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="s3orch-bench-")))
        moto: MotoServer | None = None
        direct: Target
        pids: dict[str, int | str] = {"client": "self"}
        if settings.backend == "s3":
            log("starting moto server")
            moto = stack.enter_context(started_moto())
            assert moto.process is not None
            pids["moto"] = moto.process.pid
            direct = S3Target(
                "direct (moto)", moto.endpoint, DIRECT_BUCKET, moto.access_key, moto.secret_key
            )
        else:
            direct = DirectoryTarget(tmp / "direct")

        config = s3orch_config(tmp, backend_entry(settings, tmp, moto))
        log("starting s3orch")
        orch = stack.enter_context(started_s3orch(tmp / "s3orch", config))
        via = S3Target("s3orch", orch.endpoint, VIRTUAL_BUCKET, ACCESS_KEY, SECRET_KEY)
        assert orch.process is not None
        meter = CpuMeter({**pids, "s3orch": orch.process.pid})
        hwm_start = vmhwm_mb(orch.process.pid)

        small = settings.small_size // KiB
        rates: dict[str, dict[str, float]] = {}
        for target in (direct, via):
            log(f"{target.label}: {settings.small_ops} x {small} KiB PUT, then GET")
            for ph in small_objects(target, settings, stop, meter):
                phases.append(ph)
                rates.setdefault(ph.name, {})[target.label] = ph.ops / ph.wall_s
        for name, by_target in rates.items():
            rows.append(
                Row(
                    f"{name} x{settings.concurrency} clients",
                    "ops/s",
                    by_target[direct.label],
                    by_target[via.label],
                    TARGET_SMALL,
                    "ratio",
                )
            )
        raw["small_ops_per_s"] = rates

        large_mib = settings.large_size // MiB
        log(f"writing a {large_mib} MiB random file")
        large_path = random_file(tmp / "large.bin", settings.large_size)
        large: dict[str, dict[str, list[float]]] = {"PUT": {}, "GET": {}}
        for target in (direct, via):
            log(f"{target.label}: {settings.large_reps} x {large_mib} MiB PUT, then GET")
            puts, gets, large_phases = large_objects(target, large_path, settings.large_reps, meter)
            large["PUT"][target.label] = puts
            large["GET"][target.label] = gets
            phases += large_phases
        large_path.unlink()
        for op, samples in large.items():
            rows.append(
                Row(
                    f"{op} {large_mib} MiB (median of {settings.large_reps})",
                    "MB/s",
                    statistics.median(samples[direct.label]),
                    statistics.median(samples[via.label]),
                    TARGET_LARGE,
                    "ratio",
                    samples,
                )
            )
        raw["large_mb_per_s"] = large
        hwm = {
            "after start": hwm_start,
            "after the 1 KiB and large phases": vmhwm_mb(orch.process.pid),
        }
        raw["s3orch_vmhwm_mb_throughput_process"] = hwm
        for when, value in hwm.items():
            rows.append(Row(f"s3orch VmHWM {when}", "MB", None, value, None, "info"))

        if not settings.skip_huge:
            huge = f"{settings.huge_size / GiB:g} GiB"
            log(f"writing a {huge} random file")
            huge_path = random_file(tmp / "huge.bin", settings.huge_size)
            # A fresh s3orch, so that its high-water mark covers this transfer alone.
            log("restarting s3orch for the peak-RSS measurement")
            orch.stop()
            with started_s3orch(tmp / "s3orch", config) as fresh:
                assert fresh.process is not None
                pid = fresh.process.pid
                via = S3Target("s3orch", fresh.endpoint, VIRTUAL_BUCKET, ACCESS_KEY, SECRET_KEY)
                log(f"s3orch: {huge} PUT, then GET with the body streamed to nowhere")
                hwm, huge_phases = huge_object(
                    pid, via, huge_path, CpuMeter({**pids, "s3orch": pid})
                )
            huge_path.unlink()
            phases += huge_phases
            raw["s3orch_vmhwm_mb_huge_process"] = hwm
            for when, value in hwm.items():
                kind, limit = ("info", None) if when == "after start" else ("max", TARGET_RSS_MB)
                rows.append(Row(f"s3orch VmHWM {when}", "MB", None, value, limit, kind))
            for ph in huge_phases:
                rate = ph.nbytes / ph.wall_s / 1e6
                rows.append(Row(ph.name, "MB/s", None, rate, None, "info"))

    return {
        "machine": machine_info(),
        "settings": asdict(settings),
        "direct_baseline": direct.label,
        "elapsed_s": round(time.perf_counter() - began, 1),
        "results": [row_json(row) for row in rows],
        "phases": [asdict(ph) for ph in phases],
        "raw": raw,
        "_rows": rows,
        "_phases": phases,
        "_processes": [*pids, "s3orch"],
    }


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--backend",
        choices=("s3", "local"),
        default="s3",
        help="s3: a moto server, baseline boto3 to it (default); "
        "local: a directory, baseline plain file write/read",
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts: a ~30 s smoke run")
    parser.add_argument("--skip-1g", action="store_true", help="skip the 1 GiB peak-RSS phase")
    parser.add_argument("--json", metavar="PATH", help="write the raw figures here, not stdout")
    parser.add_argument("--small-ops", type=int, help="1 KiB ops per phase (default 2000)")
    parser.add_argument("--concurrency", type=int, default=8, help="1 KiB client threads")
    parser.add_argument("--large-reps", type=int, help="64 MiB repetitions (default 3)")
    args = parser.parse_args(argv)
    return Settings(
        backend=args.backend,
        small_ops=args.small_ops or (400 if args.quick else 2000),
        small_size=1 * KiB,
        concurrency=args.concurrency,
        large_size=(16 if args.quick else 64) * MiB,
        large_reps=args.large_reps or (2 if args.quick else 3),
        huge_size=(256 * MiB if args.quick else 1 * GiB),
        skip_huge=args.skip_1g,
        json_path=args.json,
    )


def run_interruptibly(run: Callable[[S], dict[str, Any]], settings: S) -> dict[str, Any] | None:
    """``run(settings)`` with SIGTERM taken as Ctrl-C; None if either stopped it (everything
    it started has been stopped then)."""
    try:
        with interrupt_on_sigterm():
            return run(settings)
    except KeyboardInterrupt:
        log("interrupted; everything started has been stopped")
        return None


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    result = run_interruptibly(run, settings)
    if result is None:
        return 130
    rows: list[Row] = result.pop("_rows")
    machine = result["machine"]
    print()
    print(f"s3orch foundation benchmark - backend: {settings.backend}; {describe_machine(machine)}")
    if settings.backend == "local":
        print(
            "baseline: plain file write/read of the same bytes in a local directory "
            "(no HTTP, no fsync); s3orch's local backend fsyncs each file and its directory"
        )
        print(
            "so the ratios include boto3 + HTTP + fsync on the s3orch side only: "
            "the targets are meant for --backend s3"
        )
    else:
        print(
            "baseline: boto3 straight to the same moto server (another bucket); "
            "clients, moto and s3orch share this machine's CPUs"
        )
    print()
    print_results(rows, result["direct_baseline"])
    print()
    print("where the time goes (wall and CPU per op or per MiB; CPU from /proc/<pid>/stat):")
    print()
    print_cpu(result.pop("_phases"), result.pop("_processes"))
    print()
    print(f"elapsed: {result['elapsed_s']} s")
    emit_json(result, settings.json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
