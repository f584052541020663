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
    c = make_client(api_keys=["alpha", "beta"], rate_limit=3, rate_window=60)
    codes = [c.get("/v1/models", headers=bearer("alpha")).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = c.get("/v1/models", headers=bearer("alpha"))
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["content-type"] == "application/problem+json"
    assert c.get("/v1/models", headers=bearer("beta")).status_code == 200
