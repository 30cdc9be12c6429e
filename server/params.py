"""Typed request parameters shared by the routers. Ids are database integers: INTEGER
primary keys, 32-bit on PostgreSQL (SQLite's hold 64). A value past that range is refused
as input with a 422 naming the parameter, never passed to the driver, whose OverflowError
(SQLite) or "integer out of range" (PostgreSQL) surfaced as a 500."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import Field

MAX_ID = 2**31 - 1  # PostgreSQL INTEGER, the narrower of the two databases
MAX_DB_INT = 2**63 - 1  # BIGINT / SQLite INTEGER, for sizes and offsets

# An id in the path: /submissions/{submission_id}.
PathId = Annotated[int, Path(ge=1, le=MAX_ID, description="a database id")]
# An id in a request body.
BodyId = Annotated[int, Field(ge=1, le=MAX_ID, description="a database id")]
