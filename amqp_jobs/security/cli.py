"""``amqp-jobs keys | grants | audit``: user keys, impersonation grants and the audit log.

Each command takes ``--app module:app`` (the app's ``Security`` and store) or
``--store URL``, with the master key from ``AMQP_JOBS_MASTER_KEY`` and the signing key
(for grants) from ``AMQP_JOBS_SIGNING_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from typing import Any

from amqp_jobs.security.guard import Security
from amqp_jobs.security.keys import MASTER_KEY_ENV, MasterKey
from amqp_jobs.security.signing import SigningKey

SIGNING_KEY_ENV = "AMQP_JOBS_SIGNING_KEY"


def _security_of(args: argparse.Namespace) -> tuple[Any, Security]:
    """The app named by ``--app``, or one built from ``--store`` and the environment."""
    from amqp_jobs.app import JobApp
    from amqp_jobs.cli import load_app

    if args.app:
        app = load_app(args.app)
        if app.security is None or app.store is None:
            raise SystemExit(f"error: the app {args.app} has no security or no store")
        return app, app.security
    if not args.store:
        raise SystemExit("error: give --app module:app or --store URL")
    signing = os.environ.get(SIGNING_KEY_ENV)
    security = Security(
        master_key=MasterKey.from_env() if os.environ.get(MASTER_KEY_ENV) else None,
        signing_key=SigningKey.from_text(signing) if signing else None,
    )
    app = JobApp(store=args.store, security=security)
    return app, security


def _when(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds") if stamp else "-"


async def _keys(args: argparse.Namespace) -> None:
    app, security = _security_of(args)
    try:
        if args.action == "rotate":
            version = await security.rotate_user_key(args.user, args.tenant)
            print(f"user {args.user!r}: key version {version} is now current")
        else:
            counts = await security.forget_user(args.user, args.tenant)
            print(
                f"user {args.user!r}: destroyed {counts['key_versions']} key version(s), "
                f"{counts['artifacts']} artifact(s), {counts['results']} stored result(s); "
                "their queued jobs will end dead"
            )
    finally:
        await app.close()


async def _grants(args: argparse.Namespace) -> None:
    app, _ = _security_of(args)
    try:
        grants = app.grants
        if args.action == "list":
            for grant in await grants.list(active_only=args.active):
                state = (
                    "revoked" if grant.revoked_at else ("active" if grant.active() else "expired")
                )
                tenant = f" @{grant.tenant}" if grant.tenant else ""
                print(
                    f"{grant.id}  {state:<8} {grant.actor} as {grant.subject}{tenant}"
                    f"  scopes={','.join(grant.scopes)}"
                    f"  until {_when(grant.expires_at)}  reason={grant.reason!r}"
                    f"  approved_by={grant.approved_by}"
                )
        else:
            if not await grants.revoke(args.id, by=args.by):
                raise SystemExit(f"error: no active grant {args.id}")
            print(f"grant {args.id} revoked")
    finally:
        await app.close()


async def _audit(args: argparse.Namespace) -> None:
    app, _ = _security_of(args)
    try:
        audit = app.audit
        if args.action == "verify":
            problem = await audit.verify()
            if problem is not None:
                raise SystemExit(f"audit log is NOT intact: {problem}")
            seq, head = await audit.head()
            print(f"audit log intact: {seq} entries, head {head[:16]}")
        else:
            entries = await audit.entries(user_id=args.user, job_id=args.job, limit=args.limit)
            for entry in entries:
                print(
                    json.dumps(
                        {
                            "seq": entry.seq,
                            "at": _when(entry.at),
                            "action": entry.action,
                            "actor": entry.actor,
                            "on_behalf_of": entry.on_behalf_of,
                            "user": entry.user_id,
                            "tenant": entry.tenant,
                            "job_id": entry.job_id,
                            "job": entry.job,
                            "outcome": entry.outcome,
                            "detail": entry.detail,
                        }
                    )
                )
    finally:
        await app.close()


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", default=os.environ.get("AMQP_JOBS_APP"), help="module:app")
    parser.add_argument("--store", help="the store URL (with AMQP_JOBS_MASTER_KEY set)")


def add_commands(commands: Any) -> None:
    """Add ``keys``, ``grants`` and ``audit`` to the ``amqp-jobs`` sub-commands."""
    keys = commands.add_parser("keys", help="rotate or destroy (crypto-shred) a user's keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    rotate = key_actions.add_parser("rotate", help="start a new key version for a user")
    rotate.add_argument("--user", required=True)
    forget = key_actions.add_parser("forget-user", help="destroy a user's keys and data")
    forget.add_argument("user")
    for parser in (rotate, forget):
        parser.add_argument("--tenant")
        _where(parser)
    keys.set_defaults(run=_keys)

    grants = commands.add_parser("grants", help="list or revoke impersonation grants")
    grant_actions = grants.add_subparsers(dest="action", required=True)
    listing = grant_actions.add_parser("list", help="every grant, newest first")
    listing.add_argument("--active", action="store_true", help="only unexpired, unrevoked")
    revoke = grant_actions.add_parser("revoke", help="revoke a grant now")
    revoke.add_argument("id")
    revoke.add_argument("--by", help="who revokes it (audited)")
    for parser in (listing, revoke):
        _where(parser)
    grants.set_defaults(run=_grants)

    audit = commands.add_parser("audit", help="verify or show the audit log")
    audit_actions = audit.add_subparsers(dest="action", required=True)
    verify = audit_actions.add_parser(
        "verify", help="check the hash chain; name the first bad entry"
    )
    show = audit_actions.add_parser("show", help="entries as JSON lines")
    show.add_argument("--user")
    show.add_argument("--job")
    show.add_argument("--limit", type=int, default=100)
    for parser in (verify, show):
        _where(parser)
    audit.set_defaults(run=_audit)
