"""Every Prometheus metric s3orch exports, in one place (prefix ``s3o_``).

Names follow the system s3orch replaces so existing dashboards keep working.
Metrics live in their own registry so several servers can run in one test
process without colliding.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

requests_total = Counter(
    "s3o_requests_total",
    "S3 requests served, by method and HTTP status.",
    ["method", "status_code"],
    registry=REGISTRY,
)
request_duration_seconds = Histogram(
    "s3o_request_duration_seconds",
    "Time from request received to response finished.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
backend_requests_total = Counter(
    "s3o_backend_requests_total",
    "Calls made to storage backends, by operation, backend and outcome.",
    ["operation", "backend", "status"],
    registry=REGISTRY,
)
backend_duration_seconds = Histogram(
    "s3o_backend_duration_seconds",
    "Time to open a backend call (a body may keep streaming afterwards).",
    ["operation", "backend"],
    registry=REGISTRY,
)
backend_bytes_total = Counter(
    "s3o_backend_bytes_total",
    "Bytes sent to each backend (put, upload_part) or asked of it (get).",
    ["operation", "backend"],
    registry=REGISTRY,
)
quota_bytes_used = Gauge(
    "s3o_quota_bytes_used", "Bytes of committed copies per backend.", ["backend"], registry=REGISTRY
)
quota_bytes_limit = Gauge(
    "s3o_quota_bytes_limit",
    "Configured quota per backend (0 = unlimited).",
    ["backend"],
    registry=REGISTRY,
)
quota_bytes_pending = Gauge(
    "s3o_quota_bytes_pending",
    "Bytes in flight or awaiting deletion per backend (counted against the quota).",
    ["backend"],
    registry=REGISTRY,
)
objects_count = Gauge(
    "s3o_objects_count", "Stored copies per backend.", ["backend"], registry=REGISTRY
)
encryption_operations_total = Counter(
    "s3o_encryption_operations_total",
    "Envelope encryption operations: encrypt and decrypt (objects, parts), wrap and unwrap (DEKs).",
    ["op"],
    registry=REGISTRY,
)
encryption_errors_total = Counter(
    "s3o_encryption_errors_total",
    "Failed encryption operations, by operation and kind of error.",
    ["op", "error_type"],
    registry=REGISTRY,
)
encryption_dek_cache_total = Counter(
    "s3o_encryption_dek_cache_total",
    "Data keys looked up in the cache of keys Vault unwrapped: hit or miss.",
    ["result"],
    registry=REGISTRY,
)
encryption_unknown_key_id_total = Counter(
    "s3o_encryption_unknown_key_id_total",
    "Data keys met whose master key is not configured (0 after a complete rotation).",
    registry=REGISTRY,
)
encryption_deks = Gauge(
    "s3o_encryption_deks",
    "Data keys (objects and multipart uploads) wrapped by each master key.",
    ["key_id"],
    registry=REGISTRY,
)
key_rotation_objects_total = Counter(
    "s3o_key_rotation_objects_total",
    "Data keys re-wrapped by key rotation jobs, by outcome.",
    ["status"],
    registry=REGISTRY,
)
cleanup_deletions_total = Counter(
    "s3o_cleanup_deletions_total",
    "Deletions of displaced or abandoned copies, by outcome.",
    ["status"],
    registry=REGISTRY,
)
jobs_running = Gauge(
    "s3o_jobs_running",
    "Background jobs this process is running now, by kind.",
    ["kind"],
    registry=REGISTRY,
)
job_items_total = Counter(
    "s3o_job_items_total",
    "Items background jobs went through, by kind and outcome (success, error).",
    ["kind", "status"],
    registry=REGISTRY,
)
jobs_finished_total = Counter(
    "s3o_jobs_finished_total",
    "Background jobs this process ended, by kind and final status.",
    ["kind", "status"],
    registry=REGISTRY,
)
job_batch_errors_total = Counter(
    "s3o_job_batch_errors_total",
    "Job batches that raised (each is retried, then fails the job), by kind.",
    ["kind"],
    registry=REGISTRY,
)
seal_sealed = Gauge(
    "s3o_seal_sealed",
    "1 while s3orch's keyring is sealed (requests that need a key get 503), else 0.",
    registry=REGISTRY,
)
keyring_active_term = Gauge(
    "s3o_keyring_active_term",
    "The keyring's active key term (new data keys are wrapped as keyring-<term>).",
    registry=REGISTRY,
)
