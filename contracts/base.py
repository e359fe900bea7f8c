"""Base class for every message on the wire.

Contracts are closed (``extra="forbid"``: an unknown field is an error, not silently dropped),
immutable (``frozen=True``) and versioned (``schema_version``): commands and events are kept for
ever, so a new reader must always know which shape it is reading.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)
