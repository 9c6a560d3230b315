"""Fixtures: a real RabbitMQ for every test, each test in its own namespace.

The broker comes from ``AMQP_URL`` (default: the local RabbitMQ). When it is not
reachable, tests fail under ``CI=true``; elsewhere a RabbitMQ container is started
with testcontainers if Docker is available, else the broker tests are skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

from amqp_jobs import JobApp
from amqp_jobs.scheduling.scheduler import leader_queue

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5672), 2):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """URL of a running RabbitMQ."""
    explicit = os.environ.get("AMQP_URL")
    url = explicit or DEFAULT_URL
    if _reachable(url):
        yield url
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"RabbitMQ is not reachable at {url} (CI=true: broker tests must run)")
    if explicit is None and _docker_available():
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.10-management") as container:
            params = container.get_connection_params()
            yield f"amqp://guest:guest@{params.host}:{params.port}/"
        return
    pytest.skip(f"RabbitMQ is not reachable at {url} and Docker is not available")


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A namespace unique to this test, named after it for `rabbitmqctl list_queues`."""
    name = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    return f"t_{name}_{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def make_app(amqp_url: str, namespace: str) -> AsyncIterator[Callable[..., JobApp]]:
    """Factory of apps in the test's namespace; deletes what they declared afterwards."""
    apps: list[JobApp] = []

    def factory(**settings: Any) -> JobApp:
        settings.setdefault("namespace", namespace)
        settings.setdefault("service", namespace)
        app = JobApp(amqp_url, **settings)
        apps.append(app)
        return app

    yield factory
    cleaner = JobApp(amqp_url, namespace=namespace)
    await cleaner.connect()
    queues = {q for app in apps for q in app.client.ready_queues} | {
        d.queue for app in apps for d in app.registry.values()
    }
    declarations = cleaner.topology.infrastructure() + [
        d for q in queues for d in cleaner.topology.work_queue(q)
    ]
    for app in apps:
        if app.router is not None:
            declarations += app.router.static_declarations()
        declarations += [app.topology.rule_queue_declaration(rule.name) for rule in app.rules]
    declarations.append(leader_queue(cleaner.topology))  # a scheduler's, if one ran
    for app in apps:
        with contextlib.suppress(Exception):
            await app.close()
    await cleaner.transport.delete(declarations)
    await cleaner.close()


@pytest.fixture
def app(make_app: Callable[..., JobApp]) -> JobApp:
    """An app in the test's namespace."""
    return make_app()


DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Any, namespace: str
) -> AsyncIterator[Callable[[], Any]]:
    """Factory of JobStores on a fresh SQLite file, or in a fresh PostgreSQL schema."""
    from sqlalchemy import make_url, text
    from sqlalchemy.ext.asyncio import create_async_engine

    from amqp_jobs.store import JobStore

    stores: list[JobStore] = []
    if request.param == "sqlite":
        url, options = f"sqlite+aiosqlite:///{tmp_path}/jobs.db", {}
        schema = None
    else:
        url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
        parsed = make_url(url)
        if not _reachable(f"x://{parsed.host or '127.0.0.1'}:{parsed.port or 5432}"):
            if os.environ.get("CI") == "true":
                pytest.fail(f"PostgreSQL is not reachable at {url} (CI=true)")
            pytest.skip(f"PostgreSQL is not reachable at {url}")
        schema = namespace.lower()
        admin = create_async_engine(url)
        async with admin.begin() as connection:
            await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        await admin.dispose()
        options = {"connect_args": {"server_settings": {"search_path": schema}}}

    def factory() -> JobStore:
        store = JobStore(url, engine_options=options)
        stores.append(store)
        return store

    yield factory
    for store in stores:
        await store.close()
    if schema is not None:
        admin = create_async_engine(url)
        async with admin.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()
