"""The service tree: wiring only. Everything here is built without doing I/O."""

from __future__ import annotations

import signal
import threading
from functools import partial
from importlib import metadata
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from s3orch import metrics
from s3orch.admin.encryption import EncryptionOperations
from s3orch.admin.operator import SealOperations
from s3orch.admin.resource import AdminResource, job_routes
from s3orch.backends.interface import IBackend
from s3orch.backends.local import LocalBackend
from s3orch.backends.metered import MeteredBackend
from s3orch.backends.s3 import S3Backend, make_http_client
from s3orch.config import BackendConfig, Config, ConfigError, EncryptionConfig, load_config
from s3orch.crypto.keyring import parse_fingerprint_term
from s3orch.crypto.keys import KeyMaterialError
from s3orch.crypto.seal import Seal
from s3orch.crypto.sources import KeySources, key_sources
from s3orch.crypto.vault import VaultTransitKeys
from s3orch.jobs import conversion, rotation
from s3orch.jobs.runner import JobRunner
from s3orch.keyring_upkeep import KeyringUpkeep
from s3orch.loops import PeriodicService
from s3orch.metrics import REGISTRY
from s3orch.objects.multipart import MultipartUploads
from s3orch.objects.orchestrator import Orchestrator
from s3orch.objects.sealing import Encryption
from s3orch.ops import HealthResource, MetricsResource, Root
from s3orch.s3api.auth import Credentials
from s3orch.s3api.request import S3Site
from s3orch.s3api.resource import S3Context, S3Resource
from s3orch.store.db import Database
from s3orch.store.deks import DekStore
from s3orch.store.jobs import JobStore
from s3orch.store.multipart import MultipartStore
from s3orch.store.objects import MetadataStore
from s3orch.store.seal import DatabaseSealStore, WrapCounts

log = Logger()

CLEANUP_INTERVAL = 60.0
USAGE_INTERVAL = 15.0
STALE_UPLOAD_INTERVAL = 600.0
# A client connection that sends nothing for this long between requests is closed
# (Twisted pauses the timer while a request is being answered).
IDLE_CONNECTION_TIMEOUT = 300.0
# An upload still unfinished after this long belonged to a process that died.
UPLOAD_TIMEOUT = 6 * 3600.0
# What job views also call their processed count, per job kind.
JOB_COUNT_NAMES = {
    rotation.KIND: "rotated",
    conversion.ENCRYPT: "converted",
    conversion.DECRYPT: "converted",
}
# aws-chunked framing adds a little to the raw body; allow for it before refusing.
FRAMING_ALLOWANCE = 1.02


class S3OrchService(MultiService):
    """The whole server: listener, database, backends and background loops."""

    def __init__(self, config: Config, reactor: Any, config_path: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.config_path = config_path
        self.reactor = reactor
        self.db = _database(config)
        self.store = MetadataStore(self.db)
        self.file_pool = ThreadPool(minthreads=1, maxthreads=8, name="s3orch-files")
        # Request bodies are hashed here while they arrive (hashlib releases the GIL).
        self.hash_pool = ThreadPool(minthreads=1, maxthreads=4, name="s3orch-hashing")
        self.http_client: Any = None
        backends: dict[str, IBackend] = {
            b.name: MeteredBackend(self._backend(b), reactor) for b in config.backends
        }
        self.vault: VaultTransitKeys | None = None
        # s3orch's own keyring (encryption.keyring): it comes up sealed.
        self.seal: Seal | None = None
        self.keyring: KeyringUpkeep | None = None
        keyring_config = config.encryption.keyring
        if keyring_config is not None:
            self.seal = Seal(DatabaseSealStore(self.db, reactor.seconds))
            self.keyring = KeyringUpkeep(
                self.seal,
                WrapCounts(self.db),
                reactor,
                keyring_config.rotation,
                self._check_keys,
                wraps=not keyring_config.decrypt_only,
            )
        self.encryption = Encryption()
        keyring_keys = self.seal.keys if self.seal else None
        self._use_keys(key_sources(config.encryption, reactor, keyring_keys), config.encryption)
        self.orchestrator = Orchestrator(
            self.store, backends, config.routing_strategy, reactor, self.encryption
        )
        upload_limits = {b.name: b.max_multipart_uploads for b in config.buckets}
        self.multipart = MultipartUploads(
            self.orchestrator, MultipartStore(self.db), lambda bucket: upload_limits.get(bucket, 0)
        )
        self.context = S3Context(
            orchestrator=self.orchestrator,
            multipart=self.multipart,
            credentials=Credentials(config.buckets),
            buckets=config.buckets,
            clock=reactor,
            max_object_size=config.server.max_object_size,
            started=reactor.seconds(),
        )
        self.jobs = JobRunner(JobStore(self.db), {}, reactor)
        self.jobs.register(
            rotation.KIND,
            rotation.KeyRotation(DekStore(self.db), self.encryption, lambda: self.vault, reactor),
        )
        self.jobs.register(conversion.ENCRYPT, conversion.Conversion(self.orchestrator, True))
        self.jobs.register(conversion.DECRYPT, conversion.Conversion(self.orchestrator, False))
        seal_operations = SealOperations(
            self.keyring,
            reactor,
            storage_type=self.db.dialect,
            version=_version(),
        )
        admin = AdminResource(
            config.admin.token,
            job_routes(self.jobs, JOB_COUNT_NAMES)
            + EncryptionOperations(self.jobs, self.encryption).routes()
            + seal_operations.routes(),
        )
        s3 = S3Resource(self.context)
        root = Root(
            s3,
            {
                b"health": HealthResource(self.health),
                b"metrics": MetricsResource(REGISTRY, self._refresh_gauges),
            },
            admin,
        )
        max_body = int(config.server.max_object_size * FRAMING_ALLOWANCE) + 1024 * 1024
        site = S3Site(
            root,
            max_body,
            s3.start_upload,
            partial(deferToThreadPool, reactor, self.hash_pool),
            timeout=IDLE_CONNECTION_TIMEOUT,
        )
        strports.service(config.server.listen_endpoint, site, reactor=reactor).setServiceParent(
            self
        )

    def _use_keys(self, sources: KeySources, config: EncryptionConfig) -> None:
        """Make ``sources`` (from ``config``) the keys everything seals and opens with."""
        self.vault = sources.vault
        self.encryption.keys = sources.keys
        self.encryption.enabled = config.enabled
        self.encryption.chunk_size = config.chunk_size
        if self.seal is not None:
            self.seal.auto_unseal = sources.auto_unseal

    def reload(self) -> Deferred[None]:
        """Read the configuration file again and switch to its encryption keys (SIGHUP).

        Connections and requests in flight are untouched: a write already sealing goes on
        with the key it has. Other sections need a restart; an invalid file changes nothing.
        """
        return Deferred.fromCoroutine(self._reload())

    async def _reload(self) -> None:
        if self.config_path is None:
            return
        path = self.config_path
        try:
            config = await deferToThreadPool(self.reactor, self.file_pool, load_config, path)
            if (config.encryption.keyring is None) != (self.seal is None):
                raise ValueError("turning encryption.keyring on or off needs a restart")
            sources = key_sources(
                config.encryption, self.reactor, self.seal.keys if self.seal else None
            )
        except (ConfigError, KeyMaterialError, ValueError, OSError) as e:
            detail = "; ".join(e.errors) if isinstance(e, ConfigError) else str(e)
            log.error(
                "reload of {path} failed, keeping the current keys: {detail}",
                path=path,
                detail=detail,
            )
            return
        old_vault = self.vault
        encryption = config.encryption
        keys = sources.keys
        self._use_keys(sources, encryption)
        if self.keyring is not None:
            self.keyring.rotation = encryption.keyring.rotation if encryption.keyring else None
            self.keyring.wraps = (
                encryption.keyring is not None and not encryption.keyring.decrypt_only
            )
            await self.keyring.apply_rotation()
        if old_vault is not None:
            await old_vault.close()
        log.info(
            "reloaded encryption keys from {path}: new objects {state}",
            path=path,
            state=f"use key {keys.primary_id}"
            if self.encryption.seals and keys
            else "are not encrypted",
        )
        await self._check_keys()

    def _vault_loops(self) -> list[PeriodicService]:
        if self.vault is None or self.config.encryption.vault is None:
            return []
        interval = self.config.encryption.vault.renew_interval
        return [PeriodicService("vault-renew", interval, self._renew_vault, self.reactor, False)]

    async def _renew_vault(self) -> None:
        if self.vault is not None:
            await self.vault.renew()

    def _backend(self, config: BackendConfig) -> IBackend:
        if config.type == "local":
            return LocalBackend(config.name, config.path, self.reactor, self.file_pool)
        if self.http_client is None:
            self.http_client = make_http_client(self.reactor)
        return S3Backend(
            name=config.name,
            endpoint=config.endpoint,
            bucket=config.bucket,
            region=config.region,
            access_key_id=config.access_key_id,
            secret_access_key=config.secret_access_key,
            force_path_style=config.force_path_style,
            checksum=config.checksum == "crc32",
            http_client=self.http_client,
            clock=self.reactor,
        )

    def startService(self) -> None:
        self.file_pool.start()
        self.hash_pool.start()
        super().startService()
        if self.config_path is not None and threading.current_thread() is threading.main_thread():
            # systemctl reload: the handler only hands over to the reactor.
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        Deferred.fromCoroutine(self._prepare()).addErrback(self._startup_failed)

    async def _prepare(self) -> None:
        version = await self.db.migrate()
        await self.store.sync_backends({b.name: b.quota_bytes for b in self.config.backends})
        if self.db.dialect == "sqlite":
            # One process owns a SQLite file: any upload still marked in flight died with us.
            await self.store.expire_uploads(self.reactor.seconds() + 1)
        await self.orchestrator.usage()
        if self.keyring is not None:
            await self.keyring.start()
        await self._check_keys()
        self.jobs.setServiceParent(self)
        self.context.ready = True
        log.info("s3orch ready: schema version {version}", version=version)
        for loop in (
            PeriodicService("cleanup", CLEANUP_INTERVAL, self._cleanup, self.reactor),
            PeriodicService("usage", USAGE_INTERVAL, self.orchestrator.usage, self.reactor, False),
            *self._vault_loops(),
            *(self.keyring.loops() if self.keyring is not None else ()),
            PeriodicService(
                "stale-uploads",
                min(STALE_UPLOAD_INTERVAL, self.config.server.multipart_max_age / 4),
                self._abort_stale,
                self.reactor,
            ),
        ):
            loop.setServiceParent(self)

    def _startup_failed(self, failure: Any) -> None:
        log.failure("s3orch could not start", failure)
        self.reactor.stop()

    async def _refresh_gauges(self) -> None:
        if self.context.ready:
            await self.orchestrator.usage()
            await self._count_deks()

    async def _count_deks(self) -> dict[str, tuple[str, int]]:
        """Publish how many data keys each master key wraps; return, by fingerprint, the
        keys no configured key is (with the id they were wrapped under, and their count)."""
        keys = self.encryption.keys
        configured = keys.key_ids() if keys is not None else {}
        counts = await self.store.dek_counts()
        metrics.encryption_deks.clear()
        missing: dict[str, tuple[str, int]] = {}
        for (key_id, fingerprint), count in sorted(counts.items()):
            # SENC v1 DEKs are named by position; the local keys open them by trial.
            # A sealed keyring lists no terms: its DEKs are checked once it is unsealed.
            if (
                fingerprint in configured
                or fingerprint.startswith("senc1:")
                or self._sealed_term(fingerprint)
            ):
                metrics.encryption_deks.labels(configured.get(fingerprint, key_id)).inc(count)
                continue
            # An id is a position in the configuration: another key may hold it now.
            metrics.encryption_deks.labels(f"unconfigured:{fingerprint}").inc(count)
            previous = missing.get(fingerprint, (key_id, 0))
            missing[fingerprint] = (previous[0], previous[1] + count)
        return missing

    def _sealed_term(self, fingerprint: str) -> bool:
        return (
            self.seal is not None
            and self.seal.sealed
            and parse_fingerprint_term(fingerprint) is not None
        )

    async def _check_keys(self) -> None:
        for fingerprint, (key_id, count) in (await self._count_deks()).items():
            log.critical(
                "{count} data keys are wrapped by a master key that is not configured (wrapped"
                " as {key_id}, fingerprint {fingerprint}): those objects cannot be read until"
                " that key is configured again (as a previous key)",
                count=count,
                key_id=key_id,
                fingerprint=fingerprint,
            )

    async def _abort_stale(self) -> None:
        await self.multipart.abort_stale(self.config.server.multipart_max_age)

    async def _cleanup(self) -> None:
        await self.orchestrator.run_cleanup(UPLOAD_TIMEOUT)

    async def health(self) -> dict[str, Any]:
        if not self.context.ready:
            return {"status": "starting"}
        try:
            await self.db.run("health", lambda cur: cur.execute("SELECT 1"))
        except Exception as e:
            return {"status": "degraded", "database": f"error: {type(e).__name__}"}
        sealed = self.seal is not None and self.seal.sealed
        return {"status": "ok", "database": "ok", "sealed": sealed}

    def stopService(self) -> Deferred[None]:
        d: Deferred[None] = Deferred.fromCoroutine(self._stop())
        return d

    async def _stop(self) -> None:
        self.context.ready = False
        await super().stopService()
        if self.keyring is not None:
            try:
                await self.keyring.flush()
            except Exception:
                log.failure("could not store the last keyring wrap counts")
        if self.vault is not None:
            await self.vault.close()
        self.db.close()
        self.hash_pool.stop()
        self.file_pool.stop()


def _version() -> str:
    try:
        return metadata.version("s3orch")
    except metadata.PackageNotFoundError:
        return "unknown"


def _database(config: Config) -> Database:
    if config.database.driver == "postgres":
        return Database.postgres(config.database.postgres_conninfo())
    return Database.sqlite(config.database.path)
