"""The gateway app: `create_app(settings)` builds everything from the settings it is given."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.adapters import AdapterRegistry
from api.auth import RateLimiter
from api.batch_runner import BatchRunner
from api.batches import BatchRecords
from api.body import parse_limiter
from api.checks import SubmitChecks
from api.cluster_view import ClusterView
from api.errors import install_error_handlers
from api.files import FileRecords
from api.idempotency import Idempotency
from api.openapi import install_openapi
from api.publisher import Publisher
from api.routes import adapters as adapter_routes
from api.routes import batches as batch_routes
from api.routes import embeddings, encode, health, jobs, webhook_secret, workers
from api.routes import files as file_routes
from api.state import Gateway
from api.waiter import CompletionWaiter
from common.broker import make_celery
from common.job_store import AsyncJobStore
from common.object_store import open_store
from common.redis_connection import async_client
from common.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = async_client(settings)
        store = AsyncJobStore(
            client,
            settings.result_ttl_s,
            settings.routing.redeliver_after_s,
            settings.redis_replica_acks,
            settings.redis_replica_ack_timeout_ms,
        )
        waiter = CompletionWaiter(client, store)
        await waiter.start()
        cluster = ClusterView(client, settings)
        waiter.on_done.append(cluster.completed)
        await cluster.start()
        publisher = Publisher(make_celery(settings))
        rate = RateLimiter(client)
        idempotency = Idempotency(client, store, settings.auth.idempotency_ttl_s)
        checks = SubmitChecks(settings)
        bulk = settings.bulk
        objects = open_store(bulk.store, bulk.s3_endpoint)
        files = FileRecords(client, objects, bulk)
        batches = BatchRecords(
            client, bulk.retention_s, bulk.max_open_batches_per_tenant, bulk.window_s
        )
        ad = settings.adapters
        adapters = AdapterRegistry(client, open_store(ad.store, ad.s3_endpoint), settings)
        app.state.parse_limiter = parse_limiter()
        gateway = Gateway(
            settings, client, store, publisher, waiter, cluster, rate, idempotency, checks,
            objects, files, batches, adapters,
        )  # fmt: skip
        app.state.gateway = gateway
        runner = BatchRunner(gateway)
        await runner.start()
        try:
            yield
        finally:
            await runner.stop()
            await cluster.stop()
            await waiter.stop()
            publisher.close()
            checks.close()
            await client.aclose()

    app = FastAPI(title="loraq", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(encode.router)
    app.include_router(embeddings.router)
    app.include_router(health.router)
    app.include_router(workers.router)
    app.include_router(webhook_secret.router)
    app.include_router(file_routes.router)
    app.include_router(batch_routes.router)
    app.include_router(adapter_routes.router)
    install_openapi(app, settings)
    return app
