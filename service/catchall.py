"""The last resort for a genuine bug: log it, answer a 500 problem, and keep the connection.

Starlette's ServerErrorMiddleware answers an unhandled exception and then re-raises it, so the server closes the
keep-alive connection and a client's next request on it is reset. This middleware, the outermost of ours, answers
instead and does not re-raise. Only when the response had already started (a half-sent body cannot be completed)
does the exception go on, for the server to abort the connection.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.problems import bug

log = logging.getLogger("service")


class CatchAllMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            await bug(Request(scope))(scope, receive, send)
