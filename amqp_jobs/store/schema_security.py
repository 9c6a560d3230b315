"""Tables of the security layer: grants, impersonators, the audit log and preferences.

Created by migration 2 (amqp_jobs.store.schema). Once released, change them by a new
migration that ALTERs, never by editing these definitions.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
