"""HEAD wherever GET is (RFC 9110 §9.3.2): the GET route runs, its status and headers go out, its body never does.

FastAPI's routes answer only the methods they declare, so without this HEAD is a 405. The GET's headers pass
unchanged (Content-Length included); the app is stopped right after them, so a stream that never ends on its own
(the SSE routes) ends there too.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        with anyio.CancelScope() as app_scope:

            async def headers_only(message: Message) -> None:
                if message["type"] != "http.response.start":
                    return  # the body (or any later message) of the GET: never sent
                await send(message)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                app_scope.cancel()  # nothing the app does from here on can reach the client

            await self.app({**scope, "method": "GET"}, receive, headers_only)
