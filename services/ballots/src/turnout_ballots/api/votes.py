"""HTTP: marking members voted, retracting marks, reading a member's entry on a roll."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import ResponseValidationError
from fastapi.routing import APIRoute
from pydantic import AliasChoices, AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter
from starlette.exceptions import HTTPException

from turnout_events.ballots import RetractionReason, VoteSource
from turnout_kit.auth import CurrentCaller, accepted_caller, current_caller

from ..service import marks, queries
from ..service import votes as commands
from .deps import Ctx, get_ctx

router = APIRouter(prefix="/v1", tags=["votes"])


class MarkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The other sources have their own ways in: conversations (contacts' member-contacted),
    # SMS replies (notifications' reply-received), scrutineers (votes:import).
    source: Literal["rep", "member_self_report"] = Field(description=(
        "rep: a rep saw or was told the member voted; member_self_report: the member's "
        "own report, passed on."))


class MarkOut(BaseModel):
    ballot_id: uuid.UUID
    member_id: uuid.UUID
    source: VoteSource = Field(description="The source of the mark in force, which may be "
                                           "an earlier one than this request's.")
    actor: str
    voted_at: AwareDatetime
    conversation_id: uuid.UUID | None


class RetractIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # `reason` as DESIGN.md names it; `reason_code`, the name the events and answers use,
    # is accepted too.
    reason_code: RetractionReason = Field(
        validation_alias=AliasChoices("reason", "reason_code"),
        description="Why the mark is withdrawn (also accepted as `reason_code`).")


class RetractionOut(BaseModel):
    retracted: MarkOut
    reason_code: RetractionReason
    retracted_by: str
    retracted_at: AwareDatetime


class Placement(BaseModel):
    group_code: str
    branch_code: str
    workplace_code: str | None
    grade: str | None


class RetractionView(BaseModel):
    source: VoteSource
    actor: str
    voted_at: AwareDatetime
    reason_code: RetractionReason
    retracted_by: str
    retracted_at: AwareDatetime


class ReplacementView(BaseModel):
    request_id: uuid.UUID
    reason: str
    requested_by: str
    requested_at: AwareDatetime


class RollEntryOut(BaseModel):
    ballot_id: uuid.UUID
    member_id: uuid.UUID
    placement: Placement = Field(description="As at the ballot's opening.")
    voted: bool
    mark: MarkOut | None
    retractions: list[RetractionView]
    replacement_requests: list[ReplacementView]


VOTE_PATH = "/ballots/{ballot_id}/votes/{member_id}"


async def mark_vote(ballot_id: uuid.UUID, member_id: uuid.UUID, body: MarkIn, ctx: Ctx,
                    caller: CurrentCaller, response: Response) -> Any:
    mark, created = await marks.mark_vote(ctx, caller, ballot_id, member_id,
                                          VoteSource(body.source))
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return queries.mark_view(mark)


# -- the fast path of marking ------------------------------------------------------------

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
_UUID: TypeAdapter[uuid.UUID] = TypeAdapter(uuid.UUID)


class MarkVoteRoute(APIRoute):
    """`PUT .../votes/{member_id}` with a fast path: the one endpoint that must take
    1,500 requests a second from one process.

    FastAPI's generic request handling (reading the body, solving the dependencies,
    validating the return value) cost about 400,000 instructions a mark (some 80 us),
    more than the mark's own work (checks, event, batch write, publishing) and over a
    quarter of the whole request in the process. A request in the plain form every
    client sends - `Content-Type: application/json`, path ids and body that validate,
    a bearer token we accept - is served here instead, by the same validators (the
    path parameters' and MarkIn's models, the token verifier), the same endpoint
    function and the response field's own serializer, so it gets the answer FastAPI
    would give. Every other request goes to FastAPI's own handler untouched, so
    refusals (401, 422, 400) are FastAPI's and the kit's, word for word. A custom
    `APIRoute.get_route_handler` is FastAPI's documented hook for this.

    The fast path knows exactly the endpoint's parameters; building the route for an
    endpoint whose parameters or dependencies differ is an error rather than a fast path
    that silently skips one."""

    def get_route_handler(self) -> Handler:
        standard = super().get_route_handler()
        _check_signature(self)
        response_field = self.response_field
        assert response_field is not None
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            plain = await _plain_mark(request)
            if plain is None:
                return await standard(request)
            ballot_id, member_id, body, caller = plain
            # The endpoint's `response`, as FastAPI makes it: headers and a status the
            # endpoint may set, merged into the answer.
            response = Response()
            del response.headers["content-length"]
            response.status_code = None  # type: ignore[assignment]
            result = await endpoint(ballot_id=ballot_id, member_id=member_id, body=body,
                                    ctx=await get_ctx(request), caller=caller,
                                    response=response)
            value, errors = response_field.validate(result, {}, loc=("response",))
            if errors:
                raise ResponseValidationError(errors=errors, body=result)
            answer = Response(content=response_field.serialize_json(value),
                              status_code=response.status_code or self.status_code or 200,
                              media_type="application/json")
            answer.headers.raw.extend(response.headers.raw)
            return answer

        return handle


async def _plain_mark(request: Request) -> tuple[uuid.UUID, uuid.UUID, MarkIn, Any] | None:
    """The parameters of a mark in the plain form, or None for FastAPI to handle it."""
    if (request.headers.get("content-type") != "application/json"
            or request.app.dependency_overrides):
        return None
    try:
        raw = await request.body()
    except HTTPException:
        raise  # 413 from the body size limit, as FastAPI lets it through
    except Exception:
        return None  # FastAPI answers what it answers for a body it cannot read
    try:
        # As FastAPI validates them: the parsed JSON and the path strings, lax mode.
        body = MarkIn.model_validate(json.loads(raw))
        ballot_id = _UUID.validate_python(request.path_params["ballot_id"])
        member_id = _UUID.validate_python(request.path_params["member_id"])
    except ValueError:  # pydantic's ValidationError and json's errors are ValueErrors
        return None
    caller = await accepted_caller(request)
    if caller is None:
        return None
    return ballot_id, member_id, body, caller


def _check_signature(route: APIRoute) -> None:
    dependant = route.dependant
    found = {
        "path": sorted(f.name for f in dependant.path_params),
        "body": [(f.name, f.field_info.annotation) for f in dependant.body_params],
        "other params": dependant.query_params + dependant.header_params
        + dependant.cookie_params,
        "dependencies": sorted((d.call for d in dependant.dependencies), key=id),
        "response": dependant.response_param_name,
    }
    expected = {
        "path": ["ballot_id", "member_id"], "body": [("body", MarkIn)], "other params": [],
        "dependencies": sorted((get_ctx, current_caller), key=id), "response": "response",
    }
    if found != expected or route.response_model is not MarkOut:
        raise TypeError(f"MarkVoteRoute's fast path does not match {route.path}'s endpoint: "
                        f"found {found}")


router.add_api_route(
    VOTE_PATH, mark_vote, methods=["PUT"], route_class_override=MarkVoteRoute,
    response_model=MarkOut, responses={
        201: {"description": "Marked voted now."},
        200: {"description": "Already voted: the mark in force, unchanged; nothing "
                             "published."}})


@router.delete(VOTE_PATH, response_model=RetractionOut)
async def retract_vote(ballot_id: uuid.UUID, member_id: uuid.UUID, body: RetractIn, ctx: Ctx,
                       caller: CurrentCaller) -> Any:
    retraction = await commands.retract_vote(ctx, caller, ballot_id, member_id,
                                             body.reason_code)
    return {"retracted": queries.mark_view(retraction.mark),
            "reason_code": retraction.reason_code, "retracted_by": retraction.retracted_by,
            "retracted_at": retraction.retracted_at}


@router.get("/ballots/{ballot_id}/roll/{member_id}", response_model=RollEntryOut)
async def roll_entry(ballot_id: uuid.UUID, member_id: uuid.UUID, ctx: Ctx,
                     caller: CurrentCaller) -> Any:
    return await queries.roll_entry(ctx, caller, ballot_id, member_id)
