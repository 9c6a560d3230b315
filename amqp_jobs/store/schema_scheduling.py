"""Tables of the scheduler: schedules and the (schedule, fire time) claims.

Created by migration 2 (amqp_jobs.store.schema). Once released, change them by a new
migration that ALTERs, never by editing these definitions.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# Unix seconds in double precision, as in amqp_jobs.store.schema.
Seconds = sa.Float(precision=53)

schedules = sa.Table(
    "amqp_jobs_schedules",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("job", sa.String(255), nullable=False),
    sa.Column("queue", sa.String(255)),
    sa.Column("cron", sa.String(255)),
    sa.Column("every", Seconds),
    sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
    sa.Column("misfire", sa.String(8), nullable=False, server_default="once"),
    sa.Column("jitter", Seconds, nullable=False, server_default="0"),
    sa.Column("data", sa.JSON),
    sa.Column("priority", sa.Integer),
    sa.Column("user_context", sa.JSON),
    sa.Column("labels", sa.JSON),
    # "code" (app.schedule, synced at scheduler start) or "store" (added at run time).
    sa.Column("origin", sa.String(8), nullable=False, server_default="store"),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    # Written by the leading scheduler as it fires; they do not touch updated_at.
    sa.Column("next_fire_at", Seconds),
    sa.Column("last_fired_at", Seconds),
    sa.Column("created_at", Seconds, nullable=False),
    # Bumped by every change of the definition or of paused: schedulers reload on it.
    sa.Column("updated_at", Seconds, nullable=False),
)
sa.Index("amqp_jobs_schedules_updated", schedules.c.updated_at)

schedule_fires = sa.Table(
    "amqp_jobs_schedule_fires",
    metadata,
    # The primary key is the claim: one row per occurrence, whoever inserts it first
    # publishes it, so two schedulers that both think they lead cannot both fire.
    sa.Column("schedule", sa.String(255), primary_key=True),
    sa.Column("fire_at", Seconds, primary_key=True),
    sa.Column("job_id", sa.String(36), nullable=False),
    sa.Column("claimed_by", sa.String(255), nullable=False),
    sa.Column("claimed_at", Seconds, nullable=False),
    sa.Column("published_at", Seconds),
)
sa.Index("amqp_jobs_schedule_fires_claimed", schedule_fires.c.claimed_at)
