"""HTTP: the provider's webhooks — members' replies and delivery receipts.

Form-encoded and signed the Twilio way (X-Twilio-Signature, see providers/twilio.py),
with the provider's auth token, or with the sandbox's own secret when the sandbox is the
provider (so a demo or a test can simulate a member replying). They carry no bearer
token: the signature is the authentication. Unsigned or badly signed calls get 403; a
call accepted before gets 409 and changes nothing.

The URL a signature covers is the one the provider called: behind a proxy, set
NOTIFICATIONS_PUBLIC_BASE_URL to its scheme and host.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import structlog
from fastapi import APIRouter, Request, Response, status

from turnout_kit.problems import Problem

from ..domain.replies import normalise_number
from ..providers.twilio import SIGNATURE_HEADER, signature_valid
from ..service import inbound
from .deps import Ctx

log = structlog.get_logger("turnout.notifications.webhooks")

router = APIRouter(prefix="/v1/webhooks/sms", tags=["webhooks"])

# Twilio reads the answer to an inbound message as TwiML: an empty Response sends
# nothing back (a STOP's confirmation goes out as a message of its own).
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
MAX_BODY = 64 * 1024  # a text is at most 1,600 characters; the rest is metadata
MAX_TEXT = 1600
FORM = "application/x-www-form-urlencoded"

# The form is read raw (the signature covers every parameter), so OpenAPI is told
# what the endpoints take.
SIGNED_FORM: dict[str, Any] = {
    "parameters": [{"name": SIGNATURE_HEADER, "in": "header", "required": True,
                    "schema": {"type": "string"}}],
    "requestBody": {"required": True, "content": {FORM: {"schema": {
        "type": "object", "additionalProperties": {"type": "string"}}}}},
}


def signed_url(request: Request, public_base_url: str | None) -> str:
    if not public_base_url:
        return str(request.url)
    query = request.url.query
    return public_base_url + request.url.path + (f"?{query}" if query else "")


async def verified_form(request: Request, ctx: Ctx, endpoint: str
                        ) -> tuple[dict[str, str], bytes]:
    """The call's parameters and its replay digest, once its signature checks out."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM:
        raise Problem(415, detail=f"Webhooks are posted as {FORM}.")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise Problem(413, detail="A webhook call is never this large.")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise Problem(400, detail="The form is not UTF-8.") from None
    signature = request.headers.get(SIGNATURE_HEADER)
    url = signed_url(request, ctx.settings.public_base_url)
    if not signature_valid(ctx.settings.webhook_secret, url, pairs, signature):
        log.warning("webhook.signature_rejected", endpoint=endpoint,
                    signed=signature is not None)
        raise Problem(403, detail=(
            f"The {SIGNATURE_HEADER} header is missing or does not match this call."
            if signature else f"Unsigned: the {SIGNATURE_HEADER} header is missing."))
    params: dict[str, str] = {}
    for name, value in pairs:
        params.setdefault(name, value)
    assert signature is not None
    return params, inbound.call_digest(signature, body)


def _required(params: dict[str, str], *names: str) -> None:
    missing = [n for n in names if not params.get(n)]
    if missing:
        raise Problem(422, detail="The call lacks required fields; see `errors`.",
                      errors=[{"field": n, "message": "required"} for n in missing])


@router.post("/inbound", response_class=Response, openapi_extra=SIGNED_FORM)
async def inbound_message(request: Request, ctx: Ctx) -> Response:
    """A member's text to us: STOP opts them out (confirmed once), YES reports their
    vote, anything else is kept for a rep to read. Answers empty TwiML."""
    params, digest = await verified_form(request, ctx, "inbound")
    _required(params, "From")
    text = params.get("Body", "")
    if len(text) > MAX_TEXT:
        raise Problem(422, detail="The call has 1 invalid field; see `errors`.",
                      errors=[{"field": "Body", "message": f"longer than {MAX_TEXT} "
                                                          "characters"}])
    sender = normalise_number(params["From"], ctx.settings.default_region)
    await inbound.receive_reply(
        ctx, sender_hash=ctx.recipient_hash(sender) if sender else None,
        reply_to=sender or "", text=text,
        provider_message_id=params.get("MessageSid") or None, digest=digest)
    return Response(EMPTY_TWIML, media_type="text/xml")


@router.post("/status", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
             openapi_extra=SIGNED_FORM)
async def status_callback(request: Request, ctx: Ctx) -> Response:
    """A delivery receipt: delivered publishes message-delivered, failed or undelivered
    message-failed, once per message. A MessageSid with no send recorded yet (the
    provider can call back before the dispatcher has recorded its answer) is kept and
    applied when the send is: 202."""
    params, digest = await verified_form(request, ctx, "status")
    _required(params, "MessageSid", "MessageStatus")
    outcome = await inbound.record_receipt(ctx, provider_message_id=params["MessageSid"],
                                           status=params["MessageStatus"],
                                           error=params.get("ErrorCode") or None,
                                           digest=digest)
    if outcome.kind == "early":
        return Response(status_code=status.HTTP_202_ACCEPTED)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
