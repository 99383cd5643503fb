"""HTTP: erasing a member's personal data (national and admin only)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from turnout_kit.auth import Caller, Role, require_roles

from ..service.erasure import erase_personal_data
from .deps import Ctx

router = APIRouter(prefix="/v1", tags=["erasure"])


@router.delete("/members/{member_id}/personal-data", status_code=status.HTTP_204_NO_CONTENT,
               responses={404: {"description": "No such member."}})
async def erase_member(member_id: uuid.UUID, ctx: Ctx,
                       caller: Annotated[Caller, Depends(require_roles(Role.national,
                                                                       Role.admin))]
                       ) -> Response:
    """Remove the member's names, contact values and conversation notes and withdraw
    their consents; keep the pseudonymous id, membership number and placement for counts.
    Safe to repeat: a second call changes and publishes nothing."""
    await erase_personal_data(ctx, caller, member_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
