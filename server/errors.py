"""Errors that carry their HTTP status; one handler renders them as problem responses."""

from __future__ import annotations

from datetime import datetime
from typing import Any


class HeldoutError(Exception):
    status_code = 400
    title = "Bad request"
    # Changes made before the error (a cooldown penalty) are committed rather than rolled back.
    keep_changes = False

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {"title": self.title, "status": self.status_code}
        body["detail"] = self.detail
        if self.field:
            body["field"] = self.field
        for key, value in self.extra.items():
            body[key] = value.isoformat() if isinstance(value, datetime) else value
        return body


class BadRequest(HeldoutError):
    pass


class Unauthorized(HeldoutError):
    status_code = 401
    title = "Unauthorized"


class NotPermitted(HeldoutError):
    status_code = 403
    title = "Forbidden"


class NotFound(HeldoutError):
    status_code = 404
    title = "Not found"


class AlreadyExists(HeldoutError):
    status_code = 409
    title = "Conflict"


class Conflict(HeldoutError):
    status_code = 409
    title = "Conflict"


class TooLarge(HeldoutError):
    status_code = 413
    title = "Payload too large"


class InvalidInput(HeldoutError):
    status_code = 422
    title = "Invalid input"


class RuleViolation(HeldoutError):
    """A submission refused by a phase rule; names the rule and when to try again."""

    status_code = 429
    title = "Submission refused"

    def __init__(
        self,
        detail: str,
        *,
        rule: str,
        next_allowed_at: datetime | None,
        status_code: int = 429,
        keep_changes: bool = False,
    ) -> None:
        super().__init__(detail, rule=rule, next_allowed_at=next_allowed_at)
        self.rule = rule
        self.next_allowed_at = next_allowed_at
        self.status_code = status_code
        self.keep_changes = keep_changes


class InvalidTransition(HeldoutError):
    status_code = 409
    title = "Invalid state transition"
