from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..context import ReportingContext


def get_ctx(request: Request) -> ReportingContext:
    return request.app.state.ctx


Ctx = Annotated[ReportingContext, Depends(get_ctx)]
