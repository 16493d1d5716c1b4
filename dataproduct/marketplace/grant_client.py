"""Writes and revokes grants on a product's control port, with the marketplace's credential.

`add` posts one grant (`POST {control}/grants`) and returns the id the product gave it;
`find` looks for a grant of the same content (so a retry after a lost answer adopts the
grant already written instead of writing a second one); `revoke` deletes one (a grant
the product no longer has counts as revoked). Every failure is a `GrantError` whose
`transient` says whether the product was unreachable or answered 5xx/429.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from dataproduct.errors import DataproductError
from dataproduct.secrets import mask_url


class GrantError(DataproductError):
    """The product did not write or revoke the grant."""

    status = 502
    code = "grant_failed"

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message, where="control")
        self.transient = transient


def grant_body(dataset: str, user: str, expires: datetime) -> dict[str, Any]:
    """The grant as the product's `POST /control/grants` takes it."""
    return {"dataset": dataset, "user": user, "expires": expires.isoformat()}


class GrantClient:
    """HTTP client of products' control ports (one connection pool, closed with `close`)."""

    def __init__(
        self,
        token: str | None,
        *,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        allowed_prefixes: Sequence[str] = (),
    ) -> None:
        self.allowed_prefixes = tuple(allowed_prefixes)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            headers=headers, timeout=timeout_s, transport=transport, follow_redirects=False
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def add(self, control_url: str, body: dict[str, Any]) -> str:
        """Write one grant; the product's id for it."""
        answer = self._call("POST", _grants_url(control_url), json=body)
        grant_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(grant_id, str) or not grant_id:
            raise GrantError("the product's answer has no grant id", transient=False)
        return grant_id

    def find(self, control_url: str, body: dict[str, Any]) -> str | None:
        """The id of a grant the product holds with exactly `body`'s content, if any."""
        answer = self._call("GET", _grants_url(control_url))
        grants = answer.get("grants") if isinstance(answer, dict) else None
        for grant in grants if isinstance(grants, list) else []:
            if isinstance(grant, dict) and _same_grant(grant, body):
                found = grant.get("id")
                return found if isinstance(found, str) else None
        return None

    def revoke(self, control_url: str, grant_id: str) -> bool:
        """Delete one grant; False when the product no longer had it."""
        url = f"{_grants_url(control_url)}/{quote(grant_id, safe='')}"
        try:
            self._call("DELETE", url)
        except _Gone:
            return False
        return True

    def _call(self, method: str, url: str, **options: Any) -> Any:
        where = mask_url(url)
        if self.allowed_prefixes and not url.startswith(self.allowed_prefixes):
            # the marketplace's credential goes only where products are known to live: a
            # publication naming another control address must not collect it
            raise GrantError(
                f"{method} {where}: the control port is not under an allowed product address "
                "(DATAPRODUCT_MARKETPLACE_PRODUCT_URL_PREFIXES)",
                transient=False,
            )
        try:
            response = self._http.request(method, url, **options)
        except httpx.HTTPError as error:
            raise GrantError(
                f"{method} {where}: the product is unreachable ({type(error).__name__})",
                transient=True,
            ) from None
        if response.status_code == 404 and method == "DELETE":
            raise _Gone
        if response.status_code >= 400:
            transient = response.status_code >= 500 or response.status_code == 429
            raise GrantError(
                f"{method} {where}: the product answered {response.status_code}: "
                f"{_reason(response)}",
                transient=transient,
            )
        try:
            return response.json()
        except ValueError:
            raise GrantError(f"{method} {where}: the answer is not JSON", transient=False) from None


class _Gone(Exception):
    """The product answered 404 to a revocation."""


def _grants_url(control_url: str) -> str:
    return f"{control_url.rstrip('/')}/grants"


def _same_grant(grant: dict[str, Any], body: dict[str, Any]) -> bool:
    if grant.get("dataset") != body["dataset"] or grant.get("user") != body["user"]:
        return False
    if any(grant.get(extra) for extra in ("tag", "source", "group", "role", "masks", "row_filter")):
        return False
    try:
        return datetime.fromisoformat(str(grant.get("expires"))) == datetime.fromisoformat(
            body["expires"]
        )
    except ValueError:
        return False


def _reason(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return str(error.get("message") or error.get("code") or "")[:300]
    except (ValueError, AttributeError):
        return response.text[:300]
