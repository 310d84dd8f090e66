"""Encryption benchmark: s3orch with encryption on against s3orch with it off, in one run.

Why: every byte is sealed on the way in and opened on the way out, so the cost of
encryption is known only as a ratio against the same server, same backend and same
machine without it. Range reads must stay cheap whatever the object size: a 1 KiB range
of a 1 GiB encrypted object may fetch at most two chunks from the backend.

Run on demand, never from the test suite::

    python benchmarks/bench_encryption.py            # full run, about 2 minutes
    python benchmarks/bench_encryption.py --quick    # smoke run: 16 MiB and 256 MiB objects
    python benchmarks/bench_encryption.py --backend local --json out.json

Both servers front the same moto process (its server mode, one bucket each) or, with
``--backend local``, a directory each; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_foundation import (
    ACCESS_KEY,
    BACKEND_BUCKET,
    SECRET_KEY,
    VIRTUAL_BUCKET,
    CpuMeter,
    MiB,
    Phase,
    Row,
    describe_machine,
    emit_json,
    interrupt_on_sigterm,
    log,
    machine_info,
    print_cpu,
    print_results,
    random_file,
    row_json,
    s3_backend_entry,
    s3_client,
    s3orch_config,
    started_moto,
    started_s3orch,
)

from s3orch.crypto.envelope import DEFAULT_CHUNK_SIZE
from s3orch.crypto.keys import generate_key

GiB = 1024 * MiB
TARGET_RATIO = 0.7
RANGE_SIZE = 1024
RANGE_READS = 20


@dataclass(frozen=True)
class Settings:
    backend: str
    large_size: int
    reps: int
    huge_size: int
    chunk_size: int
    json_path: str | None


def metric_sum(endpoint: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``, from /metrics."""
    text = urllib.request.urlopen(endpoint + "/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def put_file(client: Any, key: str, path: Path) -> None:
    with path.open("rb") as body:
        client.put_object(
            Bucket=VIRTUAL_BUCKET, Key=key, Body=body, ContentLength=path.stat().st_size
        )


def get_all(client: Any, key: str) -> int:
    body = client.get_object(Bucket=VIRTUAL_BUCKET, Key=key)["Body"]
    total = 0
    try:
        for chunk in body.iter_chunks(MiB):
            total += len(chunk)
    finally:
        body.close()
    return total


def large_round_trips(
    clients: dict[str, Any], path: Path, reps: int, meter: CpuMeter
) -> tuple[dict[str, dict[str, list[float]]], list[Phase]]:
    """MB/s of PUT and GET of one object through each server, alternating which goes first."""
    size = path.stat().st_size
    rates: dict[str, dict[str, list[float]]] = {label: {"PUT": [], "GET": []} for label in clients}
    cpu: dict[tuple[str, str], dict[str, float]] = {}
    wall: dict[tuple[str, str], float] = {}
    for client in clients.values():  # untimed warm-up
        put_file(client, "warmup", path)
        get_all(client, "warmup")
    order = list(clients)
    for rep in range(reps):
        for label in order if rep % 2 == 0 else order[::-1]:
            client = clients[label]
            for op in ("PUT", "GET"):
                before = meter.snapshot()
                start = time.perf_counter()
                if op == "PUT":
                    put_file(client, "large", path)
                elif (got := get_all(client, "large")) != size:
                    raise RuntimeError(f"{label}: GET returned {got} of {size} bytes")
                elapsed = time.perf_counter() - start
                rates[label][op].append(size / elapsed / 1e6)
                spent = CpuMeter.since(before, meter.snapshot())
                key = (label, op)
                wall[key] = wall.get(key, 0.0) + elapsed
                total = cpu.setdefault(key, dict.fromkeys(spent, 0.0))
                for name, seconds in spent.items():
                    total[name] = round(total[name] + seconds, 3)
    phases = [
        Phase(
            f"{op} {size // MiB} MiB", label, reps, reps * size, wall[(label, op)], cpu[(label, op)]
        )
        for (label, op) in cpu
    ]
    return rates, phases


def range_reads(
    client: Any, endpoint: str, path: Path, size: int, chunk_size: int
) -> dict[str, Any]:
    """1 KiB ranges of a ``size``-byte encrypted object: bytes and requests asked of the
    backend per read, and the latency, checked against the file's bytes."""
    put_file(client, "huge", path)
    rng = random.Random(1)
    starts = [rng.randrange(0, size - RANGE_SIZE) for _ in range(RANGE_READS - 2)]
    # One range ends exactly at a chunk boundary's far side, one straddles it.
    starts += [chunk_size * 100 - RANGE_SIZE, chunk_size * 100 - RANGE_SIZE // 2]
    fetched: list[float] = []
    requests: list[float] = []
    latency: list[float] = []
    with path.open("rb") as source:
        for start in starts:
            end = start + RANGE_SIZE - 1
            before_bytes = metric_sum(endpoint, "s3o_backend_bytes_total", operation="get")
            before_calls = metric_sum(endpoint, "s3o_backend_requests_total", operation="get")
            began = time.perf_counter()
            body = client.get_object(
                Bucket=VIRTUAL_BUCKET, Key="huge", Range=f"bytes={start}-{end}"
            )
            data = body["Body"].read()
            latency.append((time.perf_counter() - began) * 1000)
            fetched.append(
                metric_sum(endpoint, "s3o_backend_bytes_total", operation="get") - before_bytes
            )
            requests.append(
                metric_sum(endpoint, "s3o_backend_requests_total", operation="get") - before_calls
            )
            source.seek(start)
            if data != source.read(RANGE_SIZE):
                raise RuntimeError(f"range {start}-{end} returned the wrong bytes")
    return {
        "object_bytes": size,
        "reads": len(starts),
        "max_backend_bytes": max(fetched),
        "max_backend_requests": max(requests),
        "limit_bytes": 2 * (chunk_size + 16),
        "median_latency_ms": statistics.median(latency),
    }


def backend_entries(settings: Settings, workdir: Path, moto: Any) -> dict[str, dict[str, Any]]:
    if settings.backend == "local":
        return {
            label: {"name": "local1", "type": "local", "path": str(workdir / label / "backend")}
            for label in ("plaintext", "encrypted")
        }
    moto.make_bucket(BACKEND_BUCKET + "-encrypted")
    encrypted = dict(s3_backend_entry(moto), bucket=BACKEND_BUCKET + "-encrypted")
    return {"plaintext": s3_backend_entry(moto), "encrypted": encrypted}


def run(settings: Settings) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="s3orch-bench-")))
        moto = stack.enter_context(started_moto()) if settings.backend == "s3" else None
        servers = {}
        for label, backend in backend_entries(settings, workdir, moto).items():
            config = s3orch_config(workdir / label, backend)
            if label == "encrypted":
                config["encryption"] = {
                    "enabled": True,
                    "master_key": generate_key(),
                    "chunk_size": settings.chunk_size,
                }
            (workdir / label).mkdir(exist_ok=True)
            servers[label] = stack.enter_context(started_s3orch(workdir / label, config))
        pids: dict[str, int | str] = {"client": os.getpid()}
        pids.update({f"s3orch {label}": server.process.pid for label, server in servers.items()})
        if moto is not None:
            pids["moto"] = moto.process.pid
        meter = CpuMeter(pids)
        clients = {
            label: s3_client(server.endpoint, ACCESS_KEY, SECRET_KEY)
            for label, server in servers.items()
        }
        large = random_file(workdir / "large.bin", settings.large_size)
        log(
            f"{settings.reps} x PUT and GET of {settings.large_size // MiB} MiB through each server"
        )
        rates, phases = large_round_trips(clients, large, settings.reps, meter)
        large.unlink()
        rows = []
        for op in ("PUT", "GET"):
            rows.append(
                Row(
                    f"{op} {settings.large_size // MiB} MiB",
                    "MB/s",
                    statistics.median(rates["plaintext"][op]),
                    statistics.median(rates["encrypted"][op]),
                    TARGET_RATIO,
                    "ratio",
                    {label: rates[label][op] for label in rates},
                )
            )
        log(
            f"{RANGE_READS} x 1 KiB range GETs of a {settings.huge_size // MiB} MiB encrypted object"
        )
        huge = random_file(workdir / "huge.bin", settings.huge_size)
        ranges = range_reads(
            clients["encrypted"],
            servers["encrypted"].endpoint,
            huge,
            settings.huge_size,
            settings.chunk_size,
        )
        huge.unlink()
        rows.append(
            Row(
                f"1 KiB range of {settings.huge_size // MiB} MiB: backend bytes",
                "bytes",
                None,
                ranges["max_backend_bytes"],
                ranges["limit_bytes"],
                "max",
            )
        )
        print_results(rows, "encryption off")
        print(
            f"  range reads: at most {ranges['max_backend_requests']:.0f} backend request(s)"
            f" per read, median latency {ranges['median_latency_ms']:.1f} ms\n"
        )
        print_cpu(phases, list(pids))
        result = {
            "settings": asdict(settings),
            "machine": machine_info(),
            "rows": [row_json(row) for row in rows],
            "ranges": ranges,
        }
        print(describe_machine(result["machine"]))
        return result


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB and 256 MiB objects")
    parser.add_argument("--backend", choices=("s3", "local"), default="s3")
    parser.add_argument("--reps", type=int, default=None, help="round trips per server")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"encryption.chunk_size in bytes (default {DEFAULT_CHUNK_SIZE}, as s3orch's)",
    )
    parser.add_argument("--json", dest="json_path", help="write the raw figures to this file")
    args = parser.parse_args(argv)
    return Settings(
        backend=args.backend,
        large_size=(16 if args.quick else 64) * MiB,
        reps=args.reps or (3 if args.quick else 5),
        huge_size=256 * MiB if args.quick else GiB,
        chunk_size=args.chunk_size,
        json_path=args.json_path,
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    with interrupt_on_sigterm():
        result = run(settings)
    emit_json(result, settings.json_path)
    failed = [row for row in result["rows"] if row["passed"] is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
