"""Errors as JSON: {"error": {"status", "message", "field"}}; and the request-size cap."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse

from serve.context import BadField
from wtb_ray.domain.errors import (
    BatchNotDeletable,
    ConcurrencyConflict,
    HasForks,
    InvalidInput,
    InvalidTransition,
    NotFound,
    StorageError,
    WTBError,
)

# Handlers are found by the exception's class hierarchy, so WTBError (500) answers only what
# no subclass here does: a workspace file that cannot be recorded or restored, an undo action
# that raised. Their messages name the file or the action.
STATUS = {NotFound: 404, InvalidTransition: 409, ConcurrencyConflict: 409, HasForks: 409,
          BatchNotDeletable: 409,
          InvalidInput: 422, StorageError: 503, WTBError: 500}


def error(status: int, message: str, field: str | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message, "field": field}},
                        status_code=status, headers=headers)


def field_path(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return error(400, f"the body is not valid JSON: {first.get('msg')}", "body")
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return error(422, message, field_path(tuple(first.get("loc", ()))))

    @app.exception_handler(HTTPException)
    async def http(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "field", None),
                     headers=exc.headers)

    @app.exception_handler(BadField)
    async def bad_field(request: Request, exc: BadField) -> JSONResponse:
        return error(422, exc.message, exc.field)

    for kind, status in STATUS.items():
        def handler(request: Request, exc: Exception, status: int = status) -> JSONResponse:
            message = str(exc)
            field = None
            if message.startswith("batch spec: "):  # "batch spec: <field>: <reason>"
                message = message.removeprefix("batch spec: ")
                field, _, rest = message.partition(": ")
                message = rest or message
            return error(status, message, field)

        app.add_exception_handler(kind, handler)


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes (413) before anyone parses them."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                # An HTTPException: FastAPI turns anything else raised while it reads the
                # body into a 400.
                raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"error": {"status": 413, "message": BodyTooLarge.message(self.limit),
                                     "field": "body"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(HTTPException):
    field = "body"

    def __init__(self, limit: int) -> None:
        super().__init__(413, self.message(limit))

    @staticmethod
    def message(limit: int) -> str:
        return f"the body is larger than {limit} bytes"
