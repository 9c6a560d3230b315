"""Tables of the user keys: each user's key versions, wrapped by the master key.

Created by migration 2 (amqp_jobs.store.schema). Once released, change them by a new
migration that ALTERs, never by editing these definitions.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
