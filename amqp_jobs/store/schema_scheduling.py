"""Tables of the scheduler: schedules and the (schedule, fire time) claims.

Created by migration 2 (amqp_jobs.store.schema). Once released, change them by a new
migration that ALTERs, never by editing these definitions.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
