"""OpenAI-style error objects: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.

A client's mistake is never a 500 or a traceback: malformed JSON, wrong types, unknown models and
every limit get a status and one line saying what to change. Only a failure of the server itself is
a 500, and it too says no more than one line.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from tunelab.errors import NotFoundError, TunelabError

log = logging.getLogger(__name__)

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error", 413: "invalid_request_error",
         422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorObject(BaseModel):
    """What every 4xx answer holds, as the API's schema documents it."""

    error: ErrorDetail


ERROR_RESPONSES = {"4XX": {"model": ErrorObject, "description": "an OpenAI-style error object"}}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """One line for every problem of the body, and the first field's name."""
    problems, first = [], None
    for item in error.errors():
        where = [str(p) for p in item.get("loc", ()) if p != "body"]
        if item.get("type") == "json_invalid":
            return f"the body is not valid JSON: {item.get('ctx', {}).get('error', item.get('msg'))}", None
        field = ".".join(where)
        first = first or field or None
        problems.append(f"{field}: {item.get('msg')}" if field else str(item.get("msg")))
    return "; ".join(problems) or "invalid request", first


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at the request's path (GET routes answer HEAD too)."""
    methods = set()
    for route in request.app.router.routes:
        for method in getattr(route, "methods", None) or ():
            if route.matches({**request.scope, "method": method})[0] == Match.FULL:
                methods.add(method)
    return sorted(methods)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError):
        return error_response(error.status, error.message, error.param, error.code, error.headers)

    @app.exception_handler(TunelabError)
    async def _user_error(request: Request, error: TunelabError):
        return error_response(400, str(error))

    @app.exception_handler(NotFoundError)  # the most specific handler wins: a TunelabError that names nothing
    async def _not_found(request: Request, error: NotFoundError):
        return error_response(404, str(error))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError):
        message, param = validation_message(error)
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException):
        message = error.detail if isinstance(error.detail, str) else "request failed"
        headers = getattr(error, "headers", None)
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        if error.status_code == 405:  # the router names only the first route on the path; list them all
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(error.status_code, message, headers=headers)

    @app.exception_handler(Exception)
    async def _failed(request: Request, error: Exception):
        log.exception("request failed: %s %s", request.method, request.url.path)
        return error_response(500, f"the server failed: {type(error).__name__}")
