"""The SQL schema of the job store, and its migrations.

Migrations are an ordered list of functions, each bringing the schema from version
``n - 1`` to ``n``; the ``amqp_jobs_schema`` table records the version reached. This is
all Alembic would give us for a schema the framework owns, without another dependency
and its configuration files.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

metadata = sa.MetaData()

# Times are Unix seconds in double precision: portable across SQLite and PostgreSQL,
# and directly comparable with the envelope's times.
Seconds = sa.Float(precision=53)

jobs = sa.Table(
    "amqp_jobs_jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("job", sa.String(255), nullable=False),
    sa.Column("queue", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    # Orders state changes that may arrive out of order from several processes:
    # attempt * 10 + rank of the state; a change with a lower value is ignored.
    sa.Column("progress_order", sa.Integer, nullable=False, server_default="0"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("user_id", sa.String(255)),
    sa.Column("tenant", sa.String(255)),
    sa.Column("publisher", sa.String(255)),
    sa.Column("correlation_id", sa.String(255)),
    sa.Column("parent_id", sa.String(36)),
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("updated_at", Seconds, nullable=False),
    sa.Column("not_before", Seconds),
    sa.Column("result", sa.JSON),
    sa.Column("error_type", sa.String(255)),
    sa.Column("error_message", sa.Text),
    sa.Column("labels", sa.JSON),
    sa.Column("progress_percent", Seconds),
    sa.Column("progress_message", sa.Text),
    sa.Column("progress_data", sa.JSON),
    sa.Column("progress_at", Seconds),
    sa.Column("cancel_requested_at", Seconds),
)
sa.Index("amqp_jobs_jobs_cancel", jobs.c.cancel_requested_at)
sa.Index("amqp_jobs_jobs_user", jobs.c.user_id, jobs.c.created_at.desc(), jobs.c.id.desc())
sa.Index("amqp_jobs_jobs_tenant", jobs.c.tenant, jobs.c.created_at.desc(), jobs.c.id.desc())
sa.Index("amqp_jobs_jobs_state", jobs.c.state, jobs.c.created_at.desc(), jobs.c.id.desc())
sa.Index("amqp_jobs_jobs_created", jobs.c.created_at.desc(), jobs.c.id.desc())

attempts = sa.Table(
    "amqp_jobs_attempts",
    metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("worker", sa.String(255)),
    sa.Column("started_at", Seconds),
    sa.Column("finished_at", Seconds),
    sa.Column("outcome", sa.String(16)),
    sa.Column("error_type", sa.String(255)),
    sa.Column("error_message", sa.Text),
    sa.Column("traceback", sa.Text),
)

job_tags = sa.Table(
    "amqp_jobs_tags",
    metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)
sa.Index("amqp_jobs_tags_lookup", job_tags.c.key, job_tags.c.value, job_tags.c.job_id)

idempotency = sa.Table(
    "amqp_jobs_idempotency",
    metadata,
    # "<job name>:<key>": the primary key is the claim, so two claims can never both win.
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("job_id", sa.String(36), nullable=False),
    sa.Column("run_attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("expires_at", Seconds, nullable=False),
)

groups = sa.Table(
    "amqp_jobs_groups",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("fired", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", Seconds, nullable=False),
)

group_results = sa.Table(
    "amqp_jobs_group_results",
    metadata,
    sa.Column("group_id", sa.String(36), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("output", sa.JSON),
)

schema_version = sa.Table(
    "amqp_jobs_schema",
    sa.MetaData(),
    sa.Column("version", sa.Integer, nullable=False),
)


def _version_1(connection: sa.Connection) -> None:
    # Version 1 is the first released schema; later versions must ALTER, not edit this.
    metadata.create_all(connection)


def _version_2(connection: sa.Connection) -> None:
    # Schedules (amqp_jobs.scheduling) and the security tables (user keys, grants, audit
    # log, preferences) keep their tables in their own module, next to their code.
    from amqp_jobs.store import schema_keys, schema_scheduling, schema_security

    schema_scheduling.metadata.create_all(connection)
    schema_keys.metadata.create_all(connection)
    schema_security.metadata.create_all(connection)


MIGRATIONS: list[Callable[[sa.Connection], None]] = [_version_1, _version_2]
"""Migration ``i`` brings the schema to version ``i + 1``. Append; never edit one."""


def migrate(connection: sa.Connection) -> int:
    """Bring the schema to the latest version; return it. Safe to run concurrently-ish:
    each step runs in the caller's transaction."""
    if connection.dialect.name == "postgresql":
        # Processes opening a fresh database at once take turns (held to the commit).
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(727274)"))
    schema_version.create(connection, checkfirst=True)
    current = connection.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
    current = int(current or 0)
    for version, step in enumerate(MIGRATIONS[current:], start=current + 1):
        step(connection)
        connection.execute(schema_version.insert().values(version=version))
    return len(MIGRATIONS)
