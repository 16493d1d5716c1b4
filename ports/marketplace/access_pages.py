"""Access-request pages: ask for a dataset, see my requests, decide as an approver.

They call the access flow (`dataproduct.marketplace.access`) directly. Every page needs a
signed-in visitor (even with `public_read`), and every form carries the session's form
token (CSRF): a post without it changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from dataproduct.errors import BadRequestError, DataproductError
from dataproduct.marketplace.access import AccessRequests
from ports.marketplace.page_parts import (
    csrf_field,
    dataset_link,
    message_page,
    page,
    path_to,
    status,
    when,
)
from ports.marketplace.session import Visitor, csrf_ok, visitor_of
from ports.marketplace.signin import form_fields

router = APIRouter(include_in_schema=False)
DURATIONS = (7, 30, 90, 180, 365)
NOTICES = {
    "requested": "Your request was sent to the dataset's owner.",
    "approved": "Approved: the grant is written on the product.",
    "denied": "Denied.",
}


def access_of(request: Request) -> AccessRequests:
    """The access flow the app opened."""
    access: AccessRequests = request.app.state.access
    return access


def request_form(product: str, dataset: str, visitor: Visitor | None) -> str:
    """The request-access form shown on a dataset's page."""
    if visitor is None:
        return "<p><a href='/signin'>Sign in</a> to request access.</p>"
    options = "".join(
        f'<option value="{days}"{" selected" if days == 30 else ""}>{days} days</option>'
        for days in DURATIONS
    )
    action = path_to("products", product, "datasets", dataset, "request")
    return (
        f'<form id="request-access" method="post" action="{action}">{csrf_field(visitor)}'
        '<p><label>Why do you need it?<br><textarea name="justification" id="justification" '
        'rows="3" cols="60" required maxlength="4000"></textarea></label></p>'
        f'<p><label>For <select name="duration_days" id="duration">{options}</select></label> '
        '<button type="submit" id="ask">Request access</button></p></form>'
    )


def _signed_in(request: Request) -> Visitor | Response:
    visitor = visitor_of(request)
    if visitor is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/signin?{urlencode({'next': target})}", 303)
    return visitor


def _refused(visitor: Visitor) -> Response:
    message = "The form is stale or was not sent from this site; reload the page."
    return HTMLResponse(message_page("Refused", message, visitor), 403)


async def _act(
    request: Request, action: Callable[[Visitor, dict[str, str]], Any], done: str
) -> Response:
    """Check sign-in and the form token, run `action` off the loop, redirect to `done`."""
    visitor = _signed_in(request)
    if not isinstance(visitor, Visitor):
        return visitor
    fields = await form_fields(request)
    if not csrf_ok(visitor, fields.get("csrf")):
        return _refused(visitor)
    try:
        await run_in_threadpool(action, visitor, fields)
    except DataproductError as error:
        title = "Not possible" if error.status != 404 else "Not found"
        return HTMLResponse(message_page(title, error.message, visitor), error.status)
    return RedirectResponse(done, 303)


@router.post("/products/{product}/datasets/{dataset}/request")
async def ask(request: Request, product: str, dataset: str) -> Response:
    """Ask for access to a dataset, then show my requests."""

    def create(visitor: Visitor, fields: dict[str, str]) -> None:
        days = fields.get("duration_days", "")
        access_of(request).request(
            visitor.principal(), product, dataset, fields.get("justification", ""),
            int(days) if days.isdigit() else 0,
        )  # fmt: skip

    return await _act(request, create, "/requests?done=requested")


@router.post("/approvals/{request_id}")
async def decide(request: Request, request_id: int) -> Response:
    """Approve or deny a pending request with a note."""

    def apply(visitor: Visitor, fields: dict[str, str]) -> None:
        access = access_of(request)
        note = fields.get("note") or None
        if fields.get("decision") == "approve":
            access.approve(request_id, visitor.principal(), note)
        elif fields.get("decision") == "deny":
            access.deny(request_id, visitor.principal(), note)
        else:
            raise BadRequestError("choose approve or deny", where="decision")

    return await _act(request, apply, f"/approvals?done={request_id}")


def _notes(view: dict[str, Any]) -> str:
    return "".join(
        f"<li>{when(e['at'])} {escape(e['kind'])} by {escape(e['actor'])}"
        f"{': ' + escape(e['note']) if e.get('note') else ''}</li>"
        for e in view.get("history", [])
    )


def _mine_row(view: dict[str, Any]) -> str:
    return (
        f"<tr data-id='{int(view['id'])}'><td>{int(view['id'])}</td>"
        f"<td>{dataset_link(view['product'], view['dataset'])} "
        f"<span class='meta'>({escape(view['product'])})</span></td>"
        f"<td>{status(view['status'])}</td><td>{escape(view['grant_state'] or '-')}</td>"
        f"<td>{int(view['duration_days'])} days</td><td>{when(view['expires_at'])}</td>"
        f"<td><ul>{_notes(view)}</ul></td></tr>"
    )


@router.get("/requests")
def mine(request: Request) -> Response:
    """The visitor's requests with their status and history."""
    visitor = _signed_in(request)
    if not isinstance(visitor, Visitor):
        return visitor
    views = access_of(request).mine(visitor.principal())
    notice = NOTICES.get(request.query_params.get("done", ""), "")
    rows = "".join(_mine_row(v) for v in views)
    body = (
        "<h1>My requests</h1>"
        + (f"<p class='flash'>{escape(notice)}</p>" if notice else "")
        + (
            '<table id="my-requests"><thead><tr><th>#</th><th>dataset</th><th>status</th>'
            "<th>grant</th><th>for</th><th>expires</th><th>history</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
            if views
            else "<p>You have not asked for any dataset yet.</p>"
        )
    )
    return HTMLResponse(page("My requests", body, visitor))


def _pending_item(view: dict[str, Any], visitor: Visitor) -> str:
    request_id = int(view["id"])
    return (
        f'<div class="hit" id="request-{request_id}"><strong>#{request_id}</strong> '
        f"{escape(view['requester'])} asks for "
        f"{dataset_link(view['product'], view['dataset'])} of {escape(view['product'])} "
        f"for {int(view['duration_days'])} days<p>{escape(view['justification'])}</p>"
        f'<form method="post" action="/approvals/{request_id}">{csrf_field(visitor)}'
        f'<label>Note <input name="note" size="50" maxlength="4000"></label> '
        '<button type="submit" name="decision" value="approve">Approve</button> '
        '<button type="submit" name="decision" value="deny">Deny</button></form></div>'
    )


@router.get("/approvals")
def approvals(request: Request) -> Response:
    """The pending requests the visitor may decide."""
    visitor = _signed_in(request)
    if not isinstance(visitor, Visitor):
        return visitor
    views = access_of(request).pending(visitor.principal())
    done = request.query_params.get("done", "")
    notice = f"Request #{int(done)} is decided." if done.isdigit() else ""
    items = "".join(_pending_item(v, visitor) for v in views)
    body = (
        "<h1>Approvals</h1>"
        + (f"<p class='flash'>{escape(notice)}</p>" if notice else "")
        + (items or "<p>Nothing waits for your decision.</p>")
    )
    return HTMLResponse(page("Approvals", body, visitor))
