"""RFC 9457 problem details (`application/problem+json`) for every error the API returns.

Routes raise `Problem` (an HTTPException with a type, title and extension members); FastAPI's own errors
(validation, malformed JSON, 404/405 of the router) are mapped here too. Only a genuine bug reaches the catch-all,
which logs it and answers a bare problem 500; Redis being unreachable is a 503, not a 500.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("service")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://glimpse.dev/problems/"  # stable identifiers; documented in the OpenAPI descriptions


class Problem(StarletteHTTPException):
    def __init__(self, status: int, kind: str | None = None, detail: str | None = None, *,
                 title: str | None = None, headers: dict[str, str] | None = None, **extensions: Any):
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.kind = kind
        self.title = title
        self.extensions = extensions


def problem_response(request: Request, status: int, *, kind: str | None = None, title: str | None = None,
                     detail: str | None = None, headers: dict[str, str] | None = None, **ext: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + kind if kind else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body["instance"] = request.url.path
    body.update(ext)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, Problem):
        return problem_response(request, exc.status_code, kind=exc.kind, title=exc.title, detail=exc.detail,
                                headers=dict(exc.headers or {}), **exc.extensions)
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != HTTPStatus(exc.status_code).phrase else None
    return problem_response(request, exc.status_code, detail=detail, headers=dict(exc.headers or {}))


def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        e = errors[0]
        where = e.get("loc", ("body", 0))[-1]
        msg = (e.get("ctx") or {}).get("error", "JSON decode error")
        return problem_response(request, 400, kind="malformed-json", title="Malformed JSON",
                                detail=f"the body is not valid JSON: {msg} at character {where}")
    clean = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in clean)
    return problem_response(request, 422, kind="invalid-request", title="Invalid request", detail=detail,
                            errors=clean)


def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(request, 503, kind="storage-unavailable", title="Job store unavailable",
                            detail="the job store (Redis) cannot be reached; retry shortly",
                            headers={"Retry-After": "5"})


def _bug(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(request, 500, detail="internal error; it has been logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(redis.ConnectionError, _redis_down)
    app.add_exception_handler(redis.TimeoutError, _redis_down)
    app.add_exception_handler(Exception, _bug)
