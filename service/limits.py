"""Request body size limit, enforced on the declared Content-Length and on the bytes actually read."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.problems import Problem


def too_large(limit: int) -> Problem:
    return Problem(413, "body-too-large", f"request bodies are limited to {limit} bytes", title="Body too large",
                   limit_bytes=limit)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            from starlette.requests import Request

            from service.problems import problem_response

            exc = too_large(self.limit)
            response = problem_response(Request(scope), 413, kind=exc.kind, title=exc.title, detail=exc.detail,
                                        **exc.extensions)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large(self.limit)  # inside the route's body read: FastAPI re-raises HTTPExceptions
            return message

        await self.app(scope, limited, send)
