"""Request body size limits, enforced on the declared Content-Length and on the bytes actually read.

Bodies are held to `limit` (64 KiB). A POST to one of `image_paths` that carries uploaded images (`images`,
`walk.images`, or a classification's `support` and `query`) may reach `image_limit` instead: such a body is read in
full (never past `image_limit`), looked at, and handed on unchanged, so a body without images is still held to the
small limit.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.problems import Problem, problem_response


def too_large(limit: int, what: str = "request bodies") -> Problem:
    return Problem(413, "body-too-large", f"{what} are limited to {limit} bytes", title="Body too large",
                   limit_bytes=limit)


def carries_images(body: bytes) -> bool:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # malformed, or nested past Python's recursion limit
        return False  # not an image body: the smaller limit answers it
    if not isinstance(doc, dict):
        return False
    walk = doc.get("walk")
    return (bool(doc.get("images")) or (isinstance(walk, dict) and bool(walk.get("images")))
            or bool(doc.get("support")) or bool(doc.get("query")))


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int, image_limit: int | None = None,
                 image_paths: tuple[str, ...] = ()):
        self.app = app
        self.small = limit
        self.image_limit = max(limit, image_limit or limit)
        self.image_paths = image_paths

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, exc: Problem) -> None:
        response = problem_response(Request(scope), 413, kind=exc.kind, title=exc.title, detail=exc.detail,
                                    **exc.extensions)
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        images = scope.get("path", "").rstrip("/") in self.image_paths and self.image_limit > self.small
        limit = self.image_limit if images else self.small
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, too_large(limit, "request bodies with images" if images
                                                               else "request bodies"))
            return
        if images:
            await self._buffered(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large(limit)  # inside the route's body read: FastAPI re-raises HTTPExceptions
            return message

        await self.app(scope, limited, send)

    async def _buffered(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.image_limit:
                await self._refuse(scope, receive, send, too_large(self.image_limit, "request bodies with images"))
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if size > self.small and not carries_images(body):
            await self._refuse(scope, receive, send, too_large(self.small, "request bodies without images"))
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
