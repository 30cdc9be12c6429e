"""The API client configured from this installation's settings (HELDOUT_API_URL,
HELDOUT_TOKEN); the client itself is `heldout.Client`, which needs none of the server."""

from __future__ import annotations

from heldout.client import ApiError, RefusedLocally
from heldout.client import Client as _Client
from server.config import Settings

__all__ = ["ApiError", "Client", "RefusedLocally"]


class Client(_Client):
    def __init__(self, settings: Settings, token: str | None = None) -> None:
        super().__init__(settings.api_url, token or settings.token)
        self.settings = settings
