"""The one authentication failure type, shared by query_api.auth, its OIDC verifier and its stream tickets."""

from __future__ import annotations

import math


class AuthError(Exception):
    """The request cannot be authenticated. `status` is the HTTP status: 401 (no or bad
    credentials), 403 (valid identity that no role is mapped to), 503 (issuer keys unreachable)."""

    def __init__(self, detail: str, status: int = 401, *, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is not None:
            return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}
        if self.status != 401:
            return {}
        # RFC 6750: tell the client which scheme to use and, for a presented token, that it is bad.
        return {"WWW-Authenticate": 'Bearer realm="netwarden"'}
