"""The read models (views) every reader shares: their tables (:mod:`.schema`) and the queries
over them (:mod:`.queries`). The projections service is their only writer."""

from managed_backups.shared.views.queries import Page, ReadModels
from managed_backups.shared.views.schema import PROJECTION_NAME, Tables, parse_ts, ts

__all__ = ["PROJECTION_NAME", "Page", "ReadModels", "Tables", "parse_ts", "ts"]
