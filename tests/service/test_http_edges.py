"""HTTP at its edges: the OpenAPI document declares every problem, HEAD wherever GET, the favicon, a body that is
not JSON (415), a bug's 500 that keeps the keep-alive connection, and framing the server cannot parse (400)."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image
from starlette.types import Message, Receive, Scope, Send

from service.framing import HTTP_ARG
from service.main import create_app
from tests.service.conftest import api_settings, wait_status
from tests.worker.conftest import wait_for

PROBLEM = "application/problem+json"
PROBLEM_SCHEMA = {PROBLEM: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
CAPTION = "the digit 3 is at the top left of the image"


# --- the OpenAPI document --------------------------------------------------------------------------------------

def test_openapi_declares_every_error_as_problem_details(make_client):
    spec = make_client(key_prefix="nobody").get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    problem = schemas["ProblemDetails"]
    assert problem["additionalProperties"] is True and set(problem["required"]) == {"type", "title", "status"}
    assert {"type", "title", "status", "detail", "instance"} <= set(problem["properties"])
    assert schemas["GenerationCreate"]["examples"] and problem["examples"]  # examples survive the rewrite
    seen = 0
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            codes = {int(c) for c in op["responses"]}
            for code, response in op["responses"].items():
                if int(code) >= 400:
                    assert response["content"] == PROBLEM_SCHEMA, (where, code)
                    assert response["description"], (where, code)
                    seen += 1
            if path.startswith("/v1/"):
                assert {401, 429, 503} <= codes, where
                assert op["responses"]["429"]["headers"]["Retry-After"]["required"] is True
            if "requestBody" in op:
                assert {400, 413, 415, 422} <= codes, where
    assert 503 in {int(c) for c in spec["paths"]["/readyz"]["get"]["responses"]}
    assert seen > 50


# --- HEAD -------------------------------------------------------------------------------------------------------

def same_head(c, url: str, status: int = 200) -> httpx.Response:
    """HEAD answers what GET does (status, type, length), without a body."""
    get, head = c.get(url), c.head(url)
    assert head.status_code == get.status_code == status, (url, head.status_code, get.text[:300])
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert int(head.headers["content-length"]) == len(get.content)
    return head


def test_head_wherever_get(client):
    same_head(client, "/healthz")
    same_head(client, "/v1/models")
    same_head(client, "/v1/models/tiny-align")
    body = {"caption": CAPTION, "output": {"gif": False, "webp": False}}
    jid = client.post("/v1/generations", json=body).json()["id"]
    wait_status(client, jid, {"succeeded"})
    head = same_head(client, f"/v1/generations/{jid}/images/0.png")
    assert head.headers["content-type"] == "image/png" and "immutable" in head.headers["cache-control"]
    assert same_head(client, f"/v1/generations/{jid}/images/7.png", 404).headers["content-type"] == PROBLEM
    assert client.head("/v1/generations").status_code == 405  # POST only: HEAD is no more allowed than GET


def test_head_of_a_stream_that_never_ends_returns_at_once(make_client, live_worker, conn):
    c = make_client(queues=["parked"])  # no worker listens to "parked": the job's event stream never ends
    jid = c.post("/v1/generations", json={"caption": CAPTION}).json()["id"]
    path = f"/v1/generations/{jid}/events"
    sent: list[Message] = []

    async def head() -> None:
        requested = False

        async def receive() -> Message:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await anyio.sleep_forever()  # the client stays connected: only HEAD itself may end the stream
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
                 "method": "HEAD", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 50000),
                 "server": ("testserver", 80)}
        with anyio.fail_after(10):  # the app itself must return, not only the response end
            await c.app(scope, receive, send)

    try:
        anyio.run(head)
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert sent[0]["status"] == 200 and (b"content-type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]
        assert sent[1] == {"type": "http.response.body", "body": b"", "more_body": False}
    finally:
        c.delete(f"/v1/generations/{jid}")
        conn.delete("rq:queue:parked")


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("OPTIONS", "/v1/generations/0123456789abcdef", "GET, HEAD, DELETE"),  # two routes share the path
    ("PUT", "/v1/likelihoods/0123456789abcdef", "GET, HEAD, DELETE"),
    ("GET", "/v1/generations", "POST"),
    ("POST", "/healthz", "GET, HEAD"),
])
def test_405_allows_every_method_of_the_path(make_client, method, path, allow):
    r = make_client(key_prefix="nobody").request(method, path)
    assert r.status_code == 405 and r.headers["content-type"] == PROBLEM
    assert r.headers["allow"] == allow
    if method != "HEAD":  # every problem says what is wrong, the router's own too
        assert r.json()["detail"] == f"{method} is not allowed at {path!r}; it takes {allow}"


def test_a_static_files_405_names_the_methods_its_header_names(make_client):
    r = make_client(key_prefix="nobody").post("/static/app.js")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert r.json()["detail"] == "POST is not allowed at '/static/app.js'; it takes GET, HEAD"


def test_a_path_no_route_serves_is_a_404_problem_saying_so(make_client):
    r = make_client(key_prefix="nobody").get("/v1/nope")
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    assert r.json()["detail"] == "nothing at '/v1/nope': GET /openapi.json (or /docs) lists the API's paths"


# --- favicon ----------------------------------------------------------------------------------------------------

def test_favicon(make_client):
    c = make_client(key_prefix="nobody")
    r = c.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"] == "image/x-icon"
    assert int(r.headers["cache-control"].split("max-age=")[1]) >= 86400
    icon = Image.open(io.BytesIO(r.content))
    assert icon.format == "ICO" and icon.size == (32, 32)
    assert "/favicon.ico" not in c.get("/openapi.json").json()["paths"]


# --- a body that is not JSON ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "content_type"), [
    ("/v1/generations", "application/x-www-form-urlencoded"),  # what `curl -d` sends
    ("/v1/generations", "text/plain; charset=utf-8"),
    ("/v1/generations", None),
    ("/v1/likelihoods", "multipart/form-data; boundary=x"),
])
def test_body_not_sent_as_json_is_415(make_client, path, content_type):
    c = make_client(key_prefix="nobody")
    headers = {"content-type": content_type} if content_type else {}
    r = c.post(path, content=b'{"caption": "the digit 3"}', headers=headers)
    assert r.status_code == 415 and r.headers["content-type"] == PROBLEM, r.text
    body = r.json()
    assert body["type"].endswith("/unsupported-media-type") and body["title"] == "Unsupported Media Type"
    assert (content_type.split(";")[0] if content_type else "no Content-Type") in body["detail"]
    assert "Content-Type: application/json" in body["detail"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "application/merge-patch+json", "Application/JSON"])
def test_json_content_types_keep_their_answers(make_client, content_type):
    c = make_client(key_prefix="nobody")
    headers = {"content-type": content_type}
    r = c.post("/v1/generations", content=b'{"caption": ', headers=headers)
    assert r.status_code == 400 and r.json()["type"].endswith("/malformed-json"), r.text
    r = c.post("/v1/generations", content=b'{"caption": "the digit 3", "n": 0}', headers=headers)
    assert r.status_code == 422 and r.json()["type"].endswith("/invalid-request"), r.text


# --- a bug: 500, and the connection stays --------------------------------------------------------------------

@contextmanager
def serving(app, http: str = "auto") -> Iterator[str]:
    """A real uvicorn server for `app` on a free loopback port, in a thread; its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, http=http, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 20, what="uvicorn to start")
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def test_bug_is_a_500_problem_and_keeps_the_connection(service_redis_url: str, checkpoints: Path, caplog):
    app = create_app(api_settings(service_redis_url, checkpoints, key_prefix="nobody"))

    @app.get("/boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("a genuine bug")

    peers: list[tuple[str, int]] = []  # the client address of every request: one per TCP connection

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            peers.append(tuple(scope["client"]))
        await app(scope, receive, send)

    caplog.set_level(logging.ERROR, logger="service")
    with serving(recording) as base, httpx.Client(base_url=base, timeout=10) as http:
        r = http.get("/boom")
        assert r.status_code == 500 and r.headers["content-type"] == PROBLEM
        assert r.json() == {"type": "about:blank", "title": "Internal Server Error", "status": 500,
                            "detail": "internal error; it has been logged", "instance": "/boom"}
        assert http.get("/healthz").status_code == 200
    assert len(peers) == 2 and peers[0] == peers[1], f"the 500 closed the connection: {peers}"
    assert "unhandled error on GET /boom" in caplog.text and "a genuine bug" in caplog.text


def test_bug_in_the_app_never_reaches_the_server(make_client):
    c = make_client(key_prefix="nobody")
    app: FastAPI = c.app  # type: ignore[assignment]

    @app.get("/boom", include_in_schema=False)
    def boom() -> None:
        raise ValueError("a genuine bug")

    r = c.get("/boom")  # TestClient re-raises whatever an app lets escape: nothing does
    assert r.status_code == 500 and r.json()["detail"] == "internal error; it has been logged"


# --- framing the server cannot parse: a problem too, then the connection closes ----------------------------------

MALFORMED = {
    "request line": b"GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    "header": b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n",
    "chunk size": b"POST /v1/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
}


def raw_exchange(base: str, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send bytes as they are; read until the server closes: (status line, headers, body)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}, body


def assert_malformed_problem(base: str) -> None:
    for what, request in MALFORMED.items():
        status, headers, body = raw_exchange(base, request)
        assert status == "HTTP/1.1 400 Bad Request", (what, status, body)
        assert headers["content-type"] == PROBLEM and headers["connection"] == "close", (what, headers)
        assert int(headers["content-length"]) == len(body), what
        problem = json.loads(body)
        assert problem["type"].endswith("/malformed-http") and problem["status"] == 400, (what, problem)
        assert "could not be parsed as HTTP/1.1" in problem["detail"], (what, problem)


def test_malformed_http_is_a_400_problem(service_redis_url: str, checkpoints: Path):
    app = create_app(api_settings(service_redis_url, checkpoints, key_prefix="nobody"))
    with serving(app, http=HTTP_ARG) as base:
        assert_malformed_problem(base)
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200  # and good requests are served as ever

