"""Multipart benchmark: boto3's parallel upload_file/download_file, through s3orch and direct.

Why: large objects reach s3orch the way boto3, the aws cli and rclone send them, as
multipart uploads with several parts in flight, and are read back as parallel ranged
GETs. That path has to keep up with the backend s3orch fronts, so it is measured as
a ratio against the same moto server in the same run (issue 3: ratio >= 0.7).

Run on demand, never from the test suite::

    python benchmarks/bench_multipart.py                  # 256 MiB, about 1-2 minutes
    python benchmarks/bench_multipart.py --quick          # 64 MiB smoke run
    python benchmarks/bench_multipart.py --json out.json

Processes, clients, reports and cleanup come from ``bench_foundation``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench_foundation import (
    ACCESS_KEY,
    DIRECT_BUCKET,
    SECRET_KEY,
    VIRTUAL_BUCKET,
    CpuMeter,
    MiB,
    Phase,
    Row,
    describe_machine,
    emit_json,
    fmt,
    log,
    machine_info,
    print_cpu,
    print_grid,
    print_results,
    random_file,
    row_json,
    run_interruptibly,
    s3_backend_entry,
    s3_client,
    s3orch_config,
    started_moto,
    started_s3orch,
    vmhwm_mb,
)
from boto3.s3.transfer import TransferConfig

TARGET_RATIO = 0.7
PART_SIZE = 8 * MiB
THREADS = 4  # also bench_foundation.s3_client's connection pool: one connection per thread
REPS = 3
OPERATIONS = ("upload", "download")
UPLOAD_STEPS = ("whole", "parts", "complete")


@dataclass(frozen=True)
class Settings:
    """What one run moves: ``--quick`` shrinks the object from 256 MiB to 64 MiB."""

    size: int
    part_size: int
    threads: int
    reps: int
    json_path: str | None
    backend_checksum: str = "crc32"

    @property
    def parts(self) -> int:
        """How many parts s3transfer cuts the object into: what the ETag suffix must say."""
        return -(-self.size // self.part_size)


class CallLog:
    """S3 calls per operation and when they ran, from botocore's hooks: the transfer's shape.

    A GetObject with a Range header counts as ``GetObject (ranged)``. Spans run
    from the first call of an operation being sent to the last one answered.
    """

    def __init__(self, client: Any) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._spans: dict[str, list[float]] = {}
        client.meta.events.register("before-call.s3", self._before)
        client.meta.events.register("after-call.s3", self._after)

    def _before(self, model: Any, params: dict[str, Any], **kwargs: Any) -> None:
        now = time.perf_counter()
        name = model.name
        if name == "GetObject" and "Range" in params.get("headers", {}):
            name = "GetObject (ranged)"
        with self._lock:
            self._counts[name] += 1
            span = self._spans.setdefault(model.name, [now, now])
            span[0] = min(span[0], now)

    def _after(self, model: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        with self._lock:
            span = self._spans.setdefault(model.name, [now, now])
            span[1] = max(span[1], now)

    def take(self) -> tuple[Counter[str], dict[str, float]]:
        """Calls and seconds per operation since the last ``take``; starts afresh."""
        with self._lock:
            counts, spans = self._counts, self._spans
            self._counts, self._spans = Counter(), {}
        return counts, {name: end - start for name, (start, end) in spans.items()}


@dataclass
class Endpoint:
    """One way to the moto server: a boto3 client (shared by s3transfer's threads) and a bucket."""

    label: str
    client: Any
    bucket: str
    calls: CallLog

    @classmethod
    def make(cls, label: str, endpoint: str, bucket: str, access: str, secret: str) -> Endpoint:
        client = s3_client(endpoint, access, secret)
        return cls(label, client, bucket, CallLog(client))


def transfer_config(settings: Settings) -> TransferConfig:
    """Issue 3's configuration; classic s3transfer, never the CRT, so both paths run the same code."""
    return TransferConfig(
        multipart_threshold=settings.part_size,
        multipart_chunksize=settings.part_size,
        max_concurrency=settings.threads,
        use_threads=True,
        preferred_transfer_client="classic",
    )


def file_digests(path: Path, part_size: int) -> tuple[str, str]:
    """SHA-256 of the file, and the ETag S3 gives it as a multipart upload in ``part_size`` parts."""
    whole = hashlib.sha256()
    part_md5s = []
    with path.open("rb") as f:
        while part := f.read(part_size):
            whole.update(part)
            part_md5s.append(hashlib.md5(part).digest())
    etag = f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"
    return whole.hexdigest(), etag


def sha256_of(path: Path) -> str:
    """SHA-256 of a downloaded file, read in blocks: the proof the bytes came back intact."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class RoundTrip:
    """One upload and download: their phases, the ETag, and how long the upload's steps took."""

    phases: list[Phase]
    etag: str
    upload_steps_s: dict[str, float]


def timed_transfer(
    name: str, endpoint: Endpoint, action: Callable[[], object], size: int, meter: CpuMeter
) -> tuple[Phase, Counter[str], dict[str, float]]:
    """Run one transfer; its wall time, each process's CPU, the S3 calls it made and their spans."""
    endpoint.calls.take()
    cpu = meter.snapshot()
    start = time.perf_counter()
    action()
    wall = time.perf_counter() - start
    cpu = CpuMeter.since(cpu, meter.snapshot())
    return Phase(name, endpoint.label, 1, size, wall, cpu), *endpoint.calls.take()


def check_calls(
    endpoint: Endpoint, what: str, calls: Counter[str], expected: dict[str, int]
) -> None:
    """Fail unless the transfer made exactly the multipart or ranged calls it should have."""
    for operation, count in expected.items():
        if calls[operation] != count:
            raise RuntimeError(
                f"{endpoint.label}: {what} made {calls[operation]} {operation} calls, "
                f"expected {count} ({dict(calls)})"
            )


def round_trip(
    endpoint: Endpoint,
    source: Path,
    key: str,
    settings: Settings,
    expected: tuple[str, str],
    meter: CpuMeter,
    scratch: Path,
) -> RoundTrip:
    """Upload ``source``, check the ETag, download it, check the bytes."""
    config = transfer_config(settings)
    client, bucket = endpoint.client, endpoint.bucket
    sha256, s3_etag = expected
    size = source.stat().st_size
    up, calls, spans = timed_transfer(
        "upload",
        endpoint,
        lambda: client.upload_file(str(source), bucket, key, Config=config),
        size,
        meter,
    )
    check_calls(
        endpoint, "upload", calls, {"UploadPart": settings.parts, "CompleteMultipartUpload": 1}
    )
    etag = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    if not etag.endswith(f"-{settings.parts}"):
        raise RuntimeError(f"{endpoint.label}: ETag {etag} does not end with -{settings.parts}")
    target = scratch / "download.bin"
    down, calls, _ = timed_transfer(
        "download",
        endpoint,
        lambda: client.download_file(bucket, key, str(target), Config=config),
        size,
        meter,
    )
    check_calls(endpoint, "download", calls, {"GetObject (ranged)": settings.parts, "GetObject": 0})
    try:
        if (got := sha256_of(target)) != sha256:
            raise RuntimeError(f"{endpoint.label}: downloaded sha256 {got}, expected {sha256}")
    finally:
        target.unlink(missing_ok=True)
    if etag != s3_etag:
        log(f"{endpoint.label}: ETag {etag} differs from S3's md5-of-part-md5s {s3_etag}")
    steps = {
        "parts": spans["UploadPart"],
        "complete": spans["CompleteMultipartUpload"],
    }
    return RoundTrip([up, down], etag, steps)


def total(phases: list[Phase]) -> Phase:
    """Several repetitions of one phase as one, for the CPU table."""
    first = phases[0]
    cpu = {name: round(sum(ph.cpu_s[name] for ph in phases), 3) for name in first.cpu_s}
    return Phase(
        f"{first.name} {first.nbytes // MiB} MiB",
        first.target,
        len(phases),
        sum(ph.nbytes for ph in phases),
        sum(ph.wall_s for ph in phases),
        cpu,
    )


def run(settings: Settings) -> dict[str, Any]:
    """Start moto and s3orch, alternate the two paths ``reps`` times, stop everything."""
    began = time.perf_counter()
    samples: dict[str, dict[str, list[float]]] = {op: {} for op in OPERATIONS}
    phases: dict[tuple[str, str], list[Phase]] = {}
    etags: dict[str, list[str]] = {}
    steps: dict[str, list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="s3orch-bench-")))
        log("starting moto server")
        moto = stack.enter_context(started_moto())
        log("starting s3orch")
        config = s3orch_config(tmp, s3_backend_entry(moto, settings.backend_checksum))
        orch = stack.enter_context(started_s3orch(tmp / "s3orch", config))
        assert moto.process is not None and orch.process is not None
        pid = orch.process.pid
        hwm_start = vmhwm_mb(pid)
        meter = CpuMeter({"client": "self", "moto": moto.process.pid, "s3orch": pid})
        direct = Endpoint.make(
            "direct (moto)", moto.endpoint, DIRECT_BUCKET, moto.access_key, moto.secret_key
        )
        via = Endpoint.make("s3orch", orch.endpoint, VIRTUAL_BUCKET, ACCESS_KEY, SECRET_KEY)
        endpoints = (direct, via)

        mib = settings.size // MiB
        log(f"writing a {mib} MiB random file and a warm-up file")
        source = random_file(tmp / "source.bin", settings.size)
        expected = file_digests(source, settings.part_size)
        warmup_size = settings.threads * settings.part_size
        warmup = random_file(tmp / "warmup.bin", warmup_size)
        warmup_settings = replace(settings, size=warmup_size, reps=1)
        for endpoint in endpoints:
            # Untimed: connections, botocore's lazy loading, s3transfer's thread pools.
            log(f"{endpoint.label}: warm-up, {warmup_size // MiB} MiB up and down")
            round_trip(
                endpoint,
                warmup,
                "warmup",
                warmup_settings,
                file_digests(warmup, settings.part_size),
                meter,
                tmp,
            )
        warmup.unlink()

        for rep in range(settings.reps):
            # Alternating which path goes first cancels out any drift between runs.
            for endpoint in endpoints if rep % 2 == 0 else endpoints[::-1]:
                log(f"{endpoint.label}: run {rep + 1}/{settings.reps}, {mib} MiB up and down")
                done = round_trip(endpoint, source, "large", settings, expected, meter, tmp)
                etags.setdefault(endpoint.label, []).append(done.etag)
                steps.setdefault(endpoint.label, []).append(
                    {"whole": done.phases[0].wall_s, **done.upload_steps_s}
                )
                for ph in done.phases:
                    phases.setdefault((ph.name, ph.target), []).append(ph)
                    rate = ph.nbytes / ph.wall_s / 1e6
                    samples[ph.name].setdefault(ph.target, []).append(rate)
        hwm_end = vmhwm_mb(pid)

    what = (
        f"{mib} MiB, {settings.parts} x {settings.part_size // MiB} MiB, "
        f"{settings.threads} threads (median of {settings.reps})"
    )
    rows = [
        Row(
            f"{op} {what}",
            "MB/s",
            statistics.median(samples[op][direct.label]),
            statistics.median(samples[op][via.label]),
            TARGET_RATIO,
            "ratio",
            samples[op],
        )
        for op in OPERATIONS
    ]
    hwm = {"after start": hwm_start, "after the runs": hwm_end}
    rows += [Row(f"s3orch VmHWM {when}", "MB", None, mb, None, "info") for when, mb in hwm.items()]
    cpu_phases = [total(phases[(op, ep.label)]) for op in OPERATIONS for ep in endpoints]
    return {
        "machine": machine_info(),
        "settings": asdict(settings),
        "direct_baseline": direct.label,
        "elapsed_s": round(time.perf_counter() - began, 1),
        "results": [row_json(row) for row in rows],
        "phases": [asdict(ph) for phs in phases.values() for ph in phs],
        "raw": {
            "mb_per_s": samples,
            "etags": etags,
            "upload_steps_s": steps,
            "sha256": expected[0],
            "s3orch_vmhwm_mb": hwm,
        },
        "_rows": rows,
        "_cpu_phases": cpu_phases,
        "_processes": ["client", "moto", "s3orch"],
    }


def parse_args(argv: list[str] | None = None) -> Settings:
    """Issue 3's fixed shape (8 MiB parts, 4 threads, 3 runs); only the size and output vary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a 64 MiB object instead of 256 MiB")
    parser.add_argument("--json", metavar="PATH", help="write the raw figures here, not stdout")
    parser.add_argument(
        "--backend-checksum",
        choices=("crc32", "none"),
        default="crc32",
        help="the s3 backend's checksum setting in s3orch (default crc32)",
    )
    args = parser.parse_args(argv)
    return Settings(
        size=(64 if args.quick else 256) * MiB,
        part_size=PART_SIZE,
        threads=THREADS,
        reps=REPS,
        json_path=args.json,
        backend_checksum=args.backend_checksum,
    )


def main(argv: list[str] | None = None) -> int:
    """Run, then print the tables a reader compares across runs, then the raw figures."""
    settings = parse_args(argv)
    result = run_interruptibly(run, settings)
    if result is None:
        return 130
    rows: list[Row] = result.pop("_rows")
    print()
    print(f"s3orch multipart benchmark - backend: s3 (moto); {describe_machine(result['machine'])}")
    print(
        "boto3 upload_file / download_file, TransferConfig(multipart_threshold="
        f"{settings.part_size // MiB} MiB, multipart_chunksize={settings.part_size // MiB} MiB, "
        f"max_concurrency={settings.threads}); baseline: the same calls straight to moto"
    )
    print()
    print_results(rows, result["direct_baseline"])
    print()
    print("each run (MB/s):")
    print()
    lines = [
        [op, label, *(fmt(rate) for rate in rates)]
        for op, by_label in result["raw"]["mb_per_s"].items()
        for label, rates in by_label.items()
    ]
    print_grid(["operation", "via", *(f"run {i + 1}" for i in range(settings.reps))], lines)
    print()
    checks = ", ".join(f"{label}: {etags[0]}" for label, etags in result["raw"]["etags"].items())
    print(
        f"checks passed: every upload made {settings.parts} UploadPart calls and its ETag ends "
        f"with -{settings.parts} ({checks}); every download made {settings.parts} ranged GETs "
        f"and its sha256 matched"
    )
    print()
    print("where the time goes (wall and CPU per MiB, all runs; CPU from /proc/<pid>/stat):")
    print()
    print_cpu(result.pop("_cpu_phases"), result.pop("_processes"))
    print()
    print(
        f"upload steps (s, median of {settings.reps}): parts = first UploadPart sent to last "
        "answered, complete = CompleteMultipartUpload"
    )
    print()
    lines = [
        [label, *(fmt(statistics.median(run[step] for run in runs), 2) for step in UPLOAD_STEPS)]
        for label, runs in result["raw"]["upload_steps_s"].items()
    ]
    print_grid(["via", *UPLOAD_STEPS], lines, left=1)
    print()
    print(f"elapsed: {result['elapsed_s']} s")
    emit_json(result, settings.json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
