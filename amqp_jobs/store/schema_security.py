"""Tables of the security layer: grants, impersonators, the audit log and preferences.

Created by migration 2 (amqp_jobs.store.schema). Once released, change them by a new
migration that ALTERs, never by editing these definitions.
"""

from __future__ import annotations

import sqlalchemy as sa

from amqp_jobs.store.schema import Seconds

metadata = sa.MetaData()

# --- Audit log (amqp_jobs.security.audit) ----------------------------------------------

audit_log = sa.Table(
    "amqp_jobs_audit",
    metadata,
    # Assigned by the appender under the chain head's lock, never by the database: the
    # primary key is what keeps two appenders from both writing entry n.
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", Seconds, nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(255)),
    sa.Column("on_behalf_of", sa.String(255)),
    sa.Column("user_id", sa.String(255)),
    sa.Column("tenant", sa.String(255)),
    sa.Column("job_id", sa.String(36)),
    sa.Column("job", sa.String(255)),
    sa.Column("outcome", sa.String(64)),
    # Canonical JSON text, exactly as hashed (not sa.JSON, which a driver may reformat).
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
sa.Index("amqp_jobs_audit_user", audit_log.c.user_id, audit_log.c.seq)
sa.Index("amqp_jobs_audit_job", audit_log.c.job_id, audit_log.c.seq)
sa.Index("amqp_jobs_audit_action", audit_log.c.action, audit_log.c.seq)
sa.Index("amqp_jobs_audit_at", audit_log.c.at)

audit_head = sa.Table(
    "amqp_jobs_audit_head",
    metadata,
    # One row (id 1): the last entry's seq and hash. Every append locks and moves it in
    # the transaction that writes the entries, so appends from many processes form one
    # line, and a log cut short at the tail no longer matches its head.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("updated_at", Seconds, nullable=False),
)

# --- Impersonation (amqp_jobs.security.grants) -----------------------------------------

impersonators = sa.Table(
    "amqp_jobs_impersonators",
    metadata,
    sa.Column("actor", sa.String(255), primary_key=True),
    sa.Column("allowed_by", sa.String(255)),
    sa.Column("allowed_at", Seconds, nullable=False),
)

grants = sa.Table(
    "amqp_jobs_grants",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("subject", sa.String(255), nullable=False),
    sa.Column("tenant", sa.String(255)),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("issued_at", Seconds, nullable=False),
    sa.Column("expires_at", Seconds, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("approved_by", sa.String(255), nullable=False),
    sa.Column("key_id", sa.String(255), nullable=False),
    sa.Column("token", sa.Text, nullable=False),
    sa.Column("revoked_at", Seconds),
    sa.Column("revoked_by", sa.String(255)),
)
sa.Index("amqp_jobs_grants_actor", grants.c.actor, grants.c.issued_at)
sa.Index("amqp_jobs_grants_subject", grants.c.subject, grants.c.issued_at)
sa.Index("amqp_jobs_grants_expires", grants.c.expires_at)

# --- Preferences (amqp_jobs.security.preferences) --------------------------------------

preferences = sa.Table(
    "amqp_jobs_preferences",
    metadata,
    # Several apps may share a store, each with its own preference model.
    sa.Column("namespace", sa.String(255), primary_key=True),
    sa.Column("user_id", sa.String(255), primary_key=True),
    # "" stands for "no tenant": primary key columns cannot be NULL.
    sa.Column("tenant", sa.String(255), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
    # Bumped by every write: an update writes only if nobody wrote since it read.
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", Seconds, nullable=False),
)
