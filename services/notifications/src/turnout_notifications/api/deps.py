from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..context import NotificationsContext


def get_ctx(request: Request) -> NotificationsContext:
    return request.app.state.ctx


Ctx = Annotated[NotificationsContext, Depends(get_ctx)]
