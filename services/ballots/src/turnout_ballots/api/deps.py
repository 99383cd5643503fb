from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..context import BallotsContext


async def get_ctx(request: Request) -> BallotsContext:
    # async: FastAPI runs a plain `def` dependency in a thread pool, a thread hop per
    # request that vote marks (1,500/s) notice.
    return request.app.state.ctx


Ctx = Annotated[BallotsContext, Depends(get_ctx)]
