"""HTTP: what the sandbox provider "sent", newest first: as JSON for national and admin
only (the texts carry first names), and as a small page at /sandbox (see below for how
that is protected) with a form to simulate a member's reply."""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel

from turnout_kit.auth import Role, require_roles
from turnout_kit.problems import Problem

from ..context import NotificationsContext
from ..db.tables import confirmations, messages, sandbox_messages
from ..service import inbound
from .deps import Ctx

router = APIRouter(prefix="/v1/sandbox", tags=["sandbox"],
                   dependencies=[Depends(require_roles(Role.national, Role.admin))])


class SandboxMessage(BaseModel):
    id: int
    provider_message_id: str
    to: str
    body: str
    accepted_at: datetime


class SandboxPage(BaseModel):
    items: list[SandboxMessage]


@router.get("/messages", response_model=SandboxPage)
async def list_messages(ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                        before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None) -> Any:
    query = sa.select(sandbox_messages).order_by(sandbox_messages.c.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(sandbox_messages.c.id < before_id)
    assert ctx.sessions is not None
    async with ctx.sessions() as session:
        rows = (await session.execute(query)).all()
    return {"items": [{"id": r.id, "provider_message_id": r.provider_message_id,
                       "to": r.to_masked, "body": r.body, "accepted_at": r.accepted_at}
                      for r in rows]}


# -- the page ------------------------------------------------------------------------------
#
# A browser page has no bearer token, so it is protected differently from the API above:
# it exists only while the sandbox is the provider (with a real provider there is nothing
# to show and nobody to simulate), and only for callers on this machine (loopback)
# unless NOTIFICATIONS_SANDBOX_PAGE_REMOTE opens it to a demo's network. Its one form
# carries a token signed with the sandbox secret, so another site open in the same
# browser cannot post replies through it. What it shows is what the sandbox "sent":
# masked numbers and texts, never a number in clear.

page_router = APIRouter(tags=["sandbox"], include_in_schema=False)

CSRF_TTL_SECONDS = 2 * 3600
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _page_allowed(request: Request, ctx: NotificationsContext) -> None:
    if ctx.settings.provider != "sandbox":
        raise Problem(404, detail="The sandbox page exists only while the sandbox is the "
                                  "provider.")
    host = request.client.host if request.client else ""
    if not ctx.settings.sandbox_page_remote and host not in LOOPBACK:
        raise Problem(404, detail="The sandbox page answers only on this machine "
                                  "(NOTIFICATIONS_SANDBOX_PAGE_REMOTE opens it).")


def _csrf_token(ctx: NotificationsContext, issued: int) -> str:
    key = ctx.settings.sandbox_webhook_secret.get_secret_value().encode()
    mac = hmac.new(key, f"sandbox-page:{issued}".encode(), hashlib.sha256).hexdigest()
    return f"{issued}.{mac}"


def _csrf_valid(ctx: NotificationsContext, token: str) -> bool:
    issued, _, _mac = token.partition(".")
    if not issued.isdigit() or not 0 <= time.time() - int(issued) <= CSRF_TTL_SECONDS:
        return False
    return hmac.compare_digest(_csrf_token(ctx, int(issued)), token)


FLASH = {
    "voted": "Reply recorded as “voted”: ballots will mark the vote.",
    "not_yet": "Reply recorded as “not yet”.",
    "opt_out": "Reply recorded as STOP: the member is opted out and confirmed once.",
    "unclassified": "Reply kept for a rep to read (GET /v1/replies).",
    "unmatched": "That message was not a reminder we can match a reply to.",
}


def _page(rows: Sequence[Any], token: str, flash: str | None) -> str:
    def e(value: object) -> str:
        return html.escape(str(value), quote=True)

    body_rows = "\n".join(
        f"<tr><td>{e(r.id)}</td><td>{e(r.accepted_at.strftime('%Y-%m-%d %H:%M:%S %Z'))}</td>"
        f"<td>{e(r.to_masked)}</td><td>{e(r.body)}</td><td>{e(r.status or 'sent')}</td></tr>"
        for r in rows) or '<tr><td colspan="5">Nothing sent yet.</td></tr>'
    options = "\n".join(
        f'<option value="{e(r.id)}">#{e(r.id)} to {e(r.to_masked)}</option>'
        for r in rows if r.reminder)
    notice = (f'<p role="status" class="notice">{e(FLASH[flash])}</p>'
              if flash in FLASH else "")
    form = (f"""<form method="post" action="/sandbox/replies">
  <input type="hidden" name="csrf" value="{e(token)}">
  <fieldset><legend>Simulate a member's reply</legend>
  <p><label for="message">Reply from the recipient of</label>
  <select id="message" name="message_id" required>{options}</select></p>
  <p><label for="text">Their text</label>
  <input id="text" name="text" required maxlength="1600" placeholder="YES"></p>
  <p><button type="submit">Send reply</button></p>
  <p class="hint">YES, Y, VOTED, DONE or 1 reports a vote; NO, NOT YET or 2 means not
  yet; STOP (or UNSUBSCRIBE, END, QUIT, CANCEL) opts out; anything else waits for a
  rep.</p>
  </fieldset></form>""" if options else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sandbox messages · Turnout notifications</title>
<style>
body{{font:16px/1.5 system-ui,sans-serif;margin:1.5rem;color:#111;background:#fff}}
table{{border-collapse:collapse;width:100%}}
th,td{{border:1px solid #999;padding:.35rem .5rem;text-align:left;vertical-align:top}}
caption{{text-align:left;font-weight:600;padding:.5rem 0}}
.notice{{border-left:4px solid #0a5;padding:.5rem}} .hint{{color:#333}}
:focus{{outline:3px solid #05a;outline-offset:2px}}
</style></head>
<body><main>
<h1>Sandbox messages</h1>
<p>What the sandbox provider “sent”, newest first. Nothing left this machine.</p>
{notice}
{form}
<table><caption>Messages (latest {len(rows)})</caption>
<thead><tr><th scope="col">#</th><th scope="col">Accepted</th><th scope="col">To</th>
<th scope="col">Text</th><th scope="col">Status</th></tr></thead>
<tbody>
{body_rows}
</tbody></table>
</main></body></html>"""


@page_router.get("/sandbox", response_class=HTMLResponse)
async def sandbox_page(request: Request, ctx: Ctx,
                       done: Annotated[str | None, Query(max_length=20)] = None) -> Any:
    _page_allowed(request, ctx)
    status = sa.func.coalesce(messages.c.status, confirmations.c.status)
    query = (sa.select(sandbox_messages.c.id, sandbox_messages.c.to_masked,
                       sandbox_messages.c.body, sandbox_messages.c.accepted_at,
                       status.label("status"),
                       messages.c.message_id.is_not(None).label("reminder"))
             .outerjoin(messages,
                        messages.c.idempotency_key == sandbox_messages.c.idempotency_key)
             .outerjoin(confirmations, confirmations.c.idempotency_key
                        == sandbox_messages.c.idempotency_key)
             .order_by(sandbox_messages.c.id.desc()).limit(200))
    assert ctx.sessions is not None
    async with ctx.sessions() as session:
        rows = (await session.execute(query)).all()
    return HTMLResponse(_page(rows, _csrf_token(ctx, int(time.time())), done),
                        headers={"Cache-Control": "no-store"})


@page_router.post("/sandbox/replies")
async def simulate_reply(request: Request, ctx: Ctx,
                         message_id: Annotated[int, Form(ge=1)],
                         text: Annotated[str, Form(min_length=1, max_length=1600)],
                         csrf: Annotated[str, Form(max_length=200)]) -> Any:
    """The member who got this sandbox message replies `text`: handled exactly as an
    inbound webhook call from their number would be (service/inbound.py)."""
    _page_allowed(request, ctx)
    if not _csrf_valid(ctx, csrf):
        raise Problem(403, detail="The form has expired or did not come from this page; "
                                  "reload the page and try again.")
    assert ctx.sessions is not None
    async with ctx.sessions() as session:
        found = (await session.execute(
            sa.select(sandbox_messages.c.to_masked, messages.c.recipient_hash)
            .outerjoin(messages,
                       messages.c.idempotency_key == sandbox_messages.c.idempotency_key)
            .where(sandbox_messages.c.id == message_id))).first()
    if found is None:
        raise Problem(404, detail=f"No sandbox message #{message_id}.")
    if found.recipient_hash is None:
        return RedirectResponse("/sandbox?done=unmatched", status_code=303)
    # The sandbox never had the number in clear: the hash it was sent to stands for it,
    # and a STOP's confirmation goes to the same masked number.
    outcome = await inbound.receive_reply(ctx, sender_hash=found.recipient_hash,
                                          reply_to=found.to_masked, text=text)
    done = outcome.intent.value if outcome.member_id else "unmatched"
    return RedirectResponse(f"/sandbox?done={done}", status_code=303)
