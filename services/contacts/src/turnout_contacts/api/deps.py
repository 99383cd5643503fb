from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..context import ContactsContext


def get_ctx(request: Request) -> ContactsContext:
    return request.app.state.ctx


Ctx = Annotated[ContactsContext, Depends(get_ctx)]
