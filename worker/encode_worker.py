"""Worker process start-up and shutdown: model, adapter cache, batcher, leases, heartbeat, Celery.

Everything heavy is built once here, before Celery starts consuming, and handed to the tasks.
Scale-down (SIGTERM) runs: stop consuming (Celery), release shard leases so other workers take
the shards over at once, finish the jobs in flight (Celery waits for them; their acks follow),
then drain the batcher and leave the worker registry. Messages a worker held but had not started
go back to their queues when its broker channel closes.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from functools import partial

import redis
from celery import signals
from prometheus_client import start_http_server

from common import keys
from common.adapter_check import AdapterRules
from common.adapters import split_revision
from common.broker import enqueue, publish_webhook
from common.heartbeats import (
    live_worker_ids,
    liveness_s,
    queued_jobs,
    remove_worker,
    write_heartbeat,
)
from common.job_store import JobStore
from common.schemas import WorkerInfo
from common.settings import Settings, resolve_model_path
from worker.adapter_cache import AdapterCache
from worker.adapter_sources import RegistrySource, sources_from_settings
from worker.batcher import Batcher
from worker.celery_app import make_worker_app
from worker.redelivery import Redeliverer
from worker.redis_client import connect
from worker.registry_sync import RegistrySync
from worker.runner import JobRunner
from worker.shard_leases import QueueControl, ShardLeases
from worker.tokenizing import WorkerTokenizer

log = logging.getLogger(__name__)


class EncodeWorker:
    def __init__(self, settings: Settings) -> None:
        import torch

        from worker.engine.engine import Engine

        ws = settings.worker
        if ws.model not in settings.models:
            raise SystemExit(f"worker model {ws.model!r} is not among the configured models")
        if ws.torch_threads:
            torch.set_num_threads(ws.torch_threads)
        self.settings = settings
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.shared_queue = keys.model_queue(ws.model)
        self.started_at = time.time()
        model_dir = resolve_model_path(settings.models[ws.model])
        self.engine = Engine.load(
            ws.model,
            model_dir,
            device=ws.device,
            dtype=ws.dtype,
            n_slots=settings.adapters.gpu_slots,
            max_rank=settings.adapters.max_rank,
        )
        self.redis = connect(settings)
        ad = settings.adapters
        rules = AdapterRules(ad.max_rank, ad.max_file_bytes, ad.base_mismatch)
        sources = sources_from_settings(ad)
        self.cache = AdapterCache(
            sources.fetch,
            self.engine,
            rules,
            n_slots=ad.gpu_slots,
            cpu_capacity=ad.cpu_slots,
            pin_memory=self.engine.device.type == "cuda",
            use_halflife=ad.use_halflife,
            on_load=self._count_load,
        )
        registry = next(s for s in sources.sources if isinstance(s, RegistrySource))
        self.registry_sync = RegistrySync(
            self.redis, self.cache, registry, ws.model, max_pins=ad.gpu_slots // 2
        )
        self.store = store = JobStore(
            self.redis,
            settings.result_ttl_s,
            settings.routing.redeliver_after_s,
            hold_ttl_s=liveness_s(ws.heartbeat_s),
        )
        self.batcher = Batcher(
            self.engine.encode, self.engine.dims, settings.batch, ended=store.ended
        )
        self.runner = JobRunner(
            store,
            WorkerTokenizer(ws.model, model_dir, self.engine.default_normalize),
            self.cache,
            self.batcher.submit,
            settings.routing.max_deliveries,
            worker_id=self.id,
            on_webhook_due=lambda job_id: publish_webhook(self.app, job_id),
        )
        self.app = make_worker_app(settings, self.runner, self.cache)
        rs = settings.routing
        self.redeliverer = Redeliverer(store, partial(enqueue, self.redis), rs.sweep_s, self.id)
        self._swept_at = 0.0
        self.queue_control = QueueControl()
        self.leases = ShardLeases(
            self.redis, ws.model, self.id, rs.shards, rs.lease_ttl_s, self.queue_control.change
        )
        self._stop = threading.Event()
        self._leasing = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="loraq-heartbeat", daemon=True)

    def start(self) -> None:
        if self.settings.worker.metrics_port:
            start_http_server(self.settings.worker.metrics_port)
        self.batcher.start()
        for lora_id in self.settings.adapters.pinned:
            self.cache.pin(lora_id)
        self._leasing.set()
        self._tick()
        self._heartbeat.start()

    def shutting_down(self) -> None:
        """SIGTERM: hand the shards to the other workers now; in-flight jobs still finish."""
        self._leasing.clear()
        self.leases.release_all()
        log.info("released shard leases; finishing jobs in flight")

    def stop(self) -> None:
        """After Celery finished its in-flight tasks: drain, then leave the registry."""
        self._stop.set()
        self._leasing.clear()
        self._heartbeat.join(timeout=10)
        self.leases.release_all()
        self.batcher.stop()
        self.registry_sync.close()
        st = self.batcher.stats
        log.info(
            "batches=%d rows=%d forward_s=%.2f real_tokens=%d padded_tokens=%d",
            st.batches, st.rows, st.forward_seconds, st.real_tokens, st.padded_tokens,
        )  # fmt: skip
        remove_worker(self.redis, self.id)

    def info(self) -> WorkerInfo:
        cache, batches = self.cache.stats, self.batcher.stats
        shard_queues = self.leases.queues()
        queued, queued_at = queued_jobs(self.redis, shard_queues)
        return WorkerInfo(
            id=self.id,
            model=self.settings.worker.model,
            queues=[self.shared_queue, *shard_queues],
            warm_adapters=self.cache.warm(),
            free_slots=self.cache.free_slots(),
            backlog=queued + self.runner.in_flight,
            backlog_at=queued_at,
            started_at=self.started_at,
            seen_at=time.time(),
            adapter_loads=cache.loads,
            adapter_hits=cache.hits,
            adapter_misses=cache.misses,
            adapter_evictions=cache.evictions,
            batches=batches.batches,
            rows=batches.rows,
            forward_cpu_s=batches.forward_cpu_seconds,
        )

    def _tick(self) -> None:
        """Leases first (so the heartbeat shows the queues this worker really consumes), then
        the heartbeat and the holds on the jobs it works on, then, now and then, the sweep for
        lost messages."""
        if self._leasing.is_set():
            live = live_worker_ids(self.redis, self.settings.worker.model)
            self.leases.tick(sorted({*live, self.id}))
        write_heartbeat(self.redis, self.info(), self.settings.worker.heartbeat_s)
        try:
            self.registry_sync.tick()
        except Exception as exc:  # neither Redis nor a bad entry may stop the heartbeat
            log.warning("adapter registry sync failed: %r", exc)
        self.store.renew_holds(self.runner.holding(), self.id)
        now = time.time()
        if self._leasing.is_set() and now - self._swept_at >= self.settings.routing.sweep_s:
            self._swept_at = now
            self.redeliverer.sweep(now)

    def _count_load(self, lora_id: str) -> None:
        """A registry adapter's `loads` (GET /v1/adapters/...); one try, it is a statistic."""
        name, revision = split_revision(lora_id)
        if revision is None:
            return
        try:
            if self.redis.exists(keys.adapter(name)):
                self.redis.hincrby(keys.adapter(name), "loads", 1)
        except redis.RedisError as exc:
            log.info("load of %s not counted: %s", lora_id, exc)

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.worker.heartbeat_s):
            try:
                self._tick()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    def run(self) -> None:
        app = self.app
        app.steps["consumer"].add(self.queue_control.bootstep())
        signals.worker_shutting_down.connect(lambda **_: self.shutting_down(), weak=False)
        signals.worker_shutdown.connect(lambda **_: self.stop(), weak=False)
        self.start()
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={self.settings.worker.concurrency}",
                f"--queues={self.shared_queue}",
                f"--hostname=loraq-{self.id}@%h",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
            ]
        )
