"""Who may see results: the holder of the admin token set in BLSP_EMO_ADMIN_TOKEN (a Space secret)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

ADMIN_TOKEN_ENV = "BLSP_EMO_ADMIN_TOKEN"


class AdminTokenError(PermissionError):
    """No admin token configured, or a wrong one given; the message says which (never the token)."""


def check_admin(token: str | None, environ: Mapping[str, str] = os.environ) -> None:
    expected = environ.get(ADMIN_TOKEN_ENV, "")
    if len(expected) < 8:
        raise AdminTokenError(
            f"results are locked: set {ADMIN_TOKEN_ENV} (at least 8 characters; a Space secret) "
            "where the app runs, then give that token"
        )
    if not token or not hmac.compare_digest(token.encode(), expected.encode()):
        raise AdminTokenError(f"wrong or missing admin token: give the value of {ADMIN_TOKEN_ENV}")
