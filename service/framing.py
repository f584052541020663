"""The one error the app never sees, a request whose HTTP framing cannot be parsed, as problem details too.

uvicorn answers such a request itself (the app is never called) with a plain-text 400; this protocol is uvicorn's
own httptools one with that answer written as `application/problem+json`, so every error a client can get has the
same shape. Run uvicorn with `--http service.framing:ProblemHttpToolsProtocol` (`make serve`, docker-compose and
the tests do).
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.problems import PROBLEM_JSON, TYPE_BASE

HTTP_ARG = "service.framing:ProblemHttpToolsProtocol"  # uvicorn's --http value

MALFORMED_BODY = json.dumps({
    "type": TYPE_BASE + "malformed-http", "title": "Malformed HTTP request", "status": 400,
    "detail": "the request could not be parsed as HTTP/1.1 (request line, headers or chunked framing); "
              "the connection is closed"}).encode()


class ProblemHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        """uvicorn's plain-text 400 (`msg` is its fixed text, logged by uvicorn already) as a problem; then close, as
        uvicorn does, since the rest of the stream cannot be framed."""
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: " + PROBLEM_JSON.encode() + b"\r\n",
                 b"content-length: " + str(len(MALFORMED_BODY)).encode() + b"\r\n",
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + MALFORMED_BODY)
        self.transport.close()
