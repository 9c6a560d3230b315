"""Tables of the user keys: each user's key versions, wrapped by the master key.

Created by migration 2 (amqp_jobs.store.schema). Once released, change them by a new
migration that ALTERs, never by editing these definitions.
"""

from __future__ import annotations

import sqlalchemy as sa

from amqp_jobs.store.schema import Seconds

metadata = sa.MetaData()

user_keys = sa.Table(
    "amqp_jobs_user_keys",
    metadata,
    # "" for a user without a tenant: NULLs would defeat the primary key's uniqueness.
    sa.Column("tenant", sa.String(255), primary_key=True),
    sa.Column("user_id", sa.String(255), primary_key=True),
    # The primary key is what makes two processes creating version 1 end with one.
    sa.Column("version", sa.Integer, primary_key=True),
    # The user key wrapped by the key provider (master key or KMS); never the raw key.
    sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
    sa.Column("created_at", Seconds, nullable=False),
)

forgotten_users = sa.Table(
    "amqp_jobs_forgotten_users",
    metadata,
    # A tombstone: the user's keys were destroyed at forgotten_at (crypto-shredding).
    sa.Column("tenant", sa.String(255), primary_key=True),
    sa.Column("user_id", sa.String(255), primary_key=True),
    sa.Column("forgotten_at", Seconds, nullable=False),
    sa.Column("versions_destroyed", sa.Integer, nullable=False),
)
