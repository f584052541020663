"""GLIMPSE_API_KEYS: bearer auth, per-key job visibility, per-key rate limit."""

from __future__ import annotations

from tests.service.conftest import wait_status

CAPTION = "the digit 3 is at the top left of the image"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_required_and_jobs_private(make_client, live_worker):
    c = make_client(api_keys=["alpha", "beta"], rate_limit=0)
    r = c.post("/v1/generations", json={"caption": CAPTION})
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert c.get("/v1/models", headers=bearer("gamma")).status_code == 401
    jid = c.post("/v1/generations", json={"caption": CAPTION}, headers=bearer("alpha")).json()["id"]
    assert c.get(f"/v1/generations/{jid}", headers=bearer("alpha")).status_code == 200
    other = c.get(f"/v1/generations/{jid}", headers=bearer("beta"))
    assert other.status_code == 404 and other.json()["type"].endswith("unknown-job")
    assert c.delete(f"/v1/generations/{jid}", headers=bearer("beta")).status_code == 404
    wait_status(c, jid, {"succeeded"}, headers=bearer("alpha"))
    assert c.get(f"/v1/generations/{jid}/images/0.png", headers=bearer("beta")).status_code == 404
    assert c.get(f"/v1/generations/{jid}/images/0.png", headers=bearer("alpha")).status_code == 200
    assert c.get("/healthz").status_code == 200  # operations stay open


def test_idempotency_keys_are_per_api_key(make_client, live_worker):
    c = make_client(api_keys=["alpha", "beta"], rate_limit=0)
    a = c.post("/v1/generations", json={"caption": CAPTION}, headers={**bearer("alpha"), "Idempotency-Key": "same"})
    b = c.post("/v1/generations", json={"caption": CAPTION, "n": 2},
               headers={**bearer("beta"), "Idempotency-Key": "same"})
    assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]


def test_rate_limit_per_key(make_client, live_worker):
    # An hour's window: with a minute's, a run that straddled two fixed windows got a 200 where 429 was due
    # (seen once, in a local run).
    c = make_client(api_keys=["alpha", "beta"], rate_limit=3, rate_window=3600)
    codes = [c.get("/v1/models", headers=bearer("alpha")).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = c.get("/v1/models", headers=bearer("alpha"))
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 3600
    assert r.headers["content-type"] == "application/problem+json"
    assert c.get("/v1/models", headers=bearer("beta")).status_code == 200


def test_polls_of_own_jobs_do_not_use_up_the_rate_limit(make_client, live_worker):
    # An hour's window: the test never straddles two of them.
    c = make_client(api_keys=["poller", "other"], rate_limit=3, rate_window=3600)
    posts = [c.post("/v1/generations", json={"caption": CAPTION}, headers=bearer("poller")) for _ in range(3)]
    assert [r.status_code for r in posts] == [202, 202, 202]
    jid = posts[0].json()["id"]
    polls = [c.get(f"/v1/generations/{jid}", headers=bearer("poller")).status_code for _ in range(10)]
    assert polls == [200] * 10
    done = wait_status(c, jid, {"succeeded"}, headers=bearer("poller"))
    out = done["outputs"][0]
    for url in (out["image"], out["frames"][0], out["animation_gif"], out["attention"], out["alignment"],
                done["links"]["events"]):
        assert c.get(url, headers=bearer("poller")).status_code == 200, url
    assert c.get(f"/v1/likelihoods/{jid}", headers=bearer("poller")).status_code == 404  # another collection's job
    r = c.post("/v1/generations", json={"caption": CAPTION}, headers=bearer("poller"))
    assert r.status_code == 429 and r.json()["type"].endswith("rate-limited")
    assert c.delete(f"/v1/generations/{posts[2].json()['id']}", headers=bearer("poller")).status_code == 429
    # Reading a job that is not yours still counts (each is a 404 until the limit).
    others = [c.get(f"/v1/generations/{jid}", headers=bearer("other")).status_code for _ in range(4)]
    assert others == [404, 404, 404, 429]


def test_failed_logins_are_limited_per_address(make_client, live_worker):
    c = make_client(address="203.0.113.7", api_keys=["alpha"], rate_limit=0, auth_fail_limit=3,
                    auth_fail_window=3600)
    assert [c.get("/v1/models").status_code for _ in range(5)] == [401] * 5  # no credentials: not a guess
    wrong = [c.get("/v1/models", headers=bearer(f"guess-{i}")).status_code for i in range(3)]
    assert wrong == [401, 401, 401]
    for headers in (bearer("guess-3"), bearer("alpha"), {}):  # past the limit even the right key waits
        r = c.get("/v1/models", headers=headers)
        assert r.status_code == 429 and r.headers["content-type"] == "application/problem+json", r.text
        assert 1 <= int(r.headers["retry-after"]) <= 3600 and r.json()["limit"] == 3
    assert c.get("/metrics", headers=bearer("alpha")).status_code == 429
    assert c.get("/healthz").status_code == 200
    elsewhere = make_client(address="203.0.113.8", api_keys=["alpha"], rate_limit=0, auth_fail_limit=3,
                            auth_fail_window=3600)
    assert elsewhere.get("/v1/models", headers=bearer("alpha")).status_code == 200


def test_metrics_needs_a_key_when_keys_are_set(make_client, live_worker):
    c = make_client(address="203.0.113.9", api_keys=["alpha"], rate_limit=1, rate_window=3600)
    for headers in ({}, bearer("wrong")):
        r = c.get("/metrics", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    for _ in range(3):  # scrapes do not use up the key's rate limit
        r = c.get("/metrics", headers=bearer("alpha"))
        assert r.status_code == 200 and "glimpse" in r.text
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes stay open


def test_idempotency_key_must_be_visible_ascii(client):
    png = "iVBORw0KGgo="  # any body: the header is checked first
    for key in ("", "   ", "two words", "x" * 201):
        for path, body in (("/v1/generations", {"caption": CAPTION}), ("/v1/likelihoods", {"images": [png]})):
            r = client.post(path, json=body, headers={"Idempotency-Key": key})
            assert r.status_code == 422 and r.json()["type"].endswith("/bad-idempotency-key"), (path, key, r.text)
            assert "Idempotency-Key" in r.json()["detail"] and "1–200 visible ASCII" in r.json()["detail"]
    ok = client.post("/v1/generations", json={"caption": CAPTION}, headers={"Idempotency-Key": "x" * 200})
    assert ok.status_code == 202
    params = client.get("/openapi.json").json()["paths"]["/v1/likelihoods"]["post"]["parameters"]
    assert [p["name"] for p in params] == ["idempotency-key"]
