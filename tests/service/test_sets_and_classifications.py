"""The Neural Statistician through the API, a real worker and a real Redis: samples of the concept a set of uploaded
examples shows (`images` on a model with `image_set` in its modes), few-shot classification (/v1/classifications),
and every bad request answered with a 422 that names what is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.sampling import sample
from tests.service.test_images_and_likelihoods import finished, pixels_of, png64
from worker.conditions import stack_sets

MODEL = "tiny-stat"
SIDE = 12  # tiny-stat is 12×12


def drawings(n: int, seed: int, side: int = SIDE) -> list[np.ndarray]:
    """Random binary drawings (0 or 255), distinct from each other."""
    rng = np.random.default_rng(seed)
    return [(rng.random((side, side)) > 0.5).astype(np.uint8) * 255 for _ in range(n)]


def ink(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((pixels > 127).astype(np.float32))[None]


def support(*classes: tuple[str, list[np.ndarray]]) -> list[dict]:
    return [{"label": label, "images": [png64(x) for x in shots]} for label, shots in classes]


def classify(client, support: list[dict], query: list[np.ndarray] | list[str], model: str = MODEL):
    query = [x if isinstance(x, str) else png64(x) for x in query]
    return client.post("/v1/classifications", json={"model": model, "support": support, "query": query})


def test_the_model_list_shows_the_statisticians_modes(client):
    models = {m["id"]: m for m in client.get("/v1/models").json()["models"]}
    m = models[MODEL]
    assert m["kind"] == "statistician" and (m["height"], m["width"], m["steps"]) == (SIDE, SIDE, 1)
    assert m["modes"] == {"none": "images", "image_set": "images", "few_shot": "labels"}


def test_samples_of_a_sets_concept_are_the_samplers_pixels_and_seeded(client, checkpoints: Path):
    examples = drawings(3, seed=1)
    body = {"model": MODEL, "images": [png64(x) for x in examples], "n": 4, "seed": 11}
    r = client.post("/v1/generations", json=body)
    assert r.status_code == 202, r.text
    assert r.headers["location"].endswith(f"/v1/generations/{r.json()['id']}")
    done = finished(client, r.headers["location"])
    assert done["condition"] == "image_set" and done["n"] == 4 and done["images"] == 4
    assert [o["seed"] for o in done["outputs"]] == [11, 12, 13, 14]
    assert all(o["input"] is None and o["frames"] == [] and o["label"] is None for o in done["outputs"])
    got = [pixels_of(client, o["image"]) for o in done["outputs"]]
    assert all(p.shape == (SIDE, SIDE) for p in got)
    # The worker's call: batch_rows rows, each reading the set (padding rows too), c ~ q(c | D) from each row's seed.
    rows = client.app.state.settings.batch_rows
    model = load_checkpoint(checkpoints / MODEL).model
    sets, mask = stack_sets([torch.stack([ink(x) for x in examples])], rows)
    direct = sample(model, seeds=[11, 12, 13, 14] + [0] * (rows - 4), sets=sets, set_mask=mask).images[:4]
    for i, pixels in enumerate(got):
        assert np.array_equal(pixels, (direct[i] * 255).round().clamp(0, 255).to(torch.uint8)[0].numpy())
    assert len({p.tobytes() for p in got}) > 1  # each sample its own seed
    again = finished(client, client.post("/v1/generations", json=body).headers["location"])
    for a, b in zip(done["outputs"], again["outputs"], strict=True):
        assert client.get(a["image"]).content == client.get(b["image"]).content
    # Without images: unconditional samples (the "none" mode)
    r = client.post("/v1/generations", json={"model": MODEL, "n": 2, "seed": 3})
    assert r.status_code == 202, r.text
    assert finished(client, r.headers["location"])["condition"] == "none"


def test_copies_of_the_support_drawings_are_their_own_class_at_score_zero(client):
    """Whatever the weights: a query that is a copy of a class's only shot has q(c | {x}) = q(c | D) (KL 0), every
    other class's KL is > 0."""
    shots = drawings(4, seed=2)
    labels = ["alpha", "beta", "gamma", "δέλτα 4"]
    order = [2, 0, 3, 1]
    r = classify(client, support(*((label, [x]) for label, x in zip(labels, shots, strict=True))),
                 [shots[k] for k in order])
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["location"].endswith(f"/v1/classifications/{job_id}")
    assert r.json()["links"]["self"].endswith(f"/v1/classifications/{job_id}")
    body = finished(client, r.headers["location"])
    assert body["condition"] == "few_shot" and body["images"] == 4 and body["seeds"] == []
    assert len(body["outputs"]) == 4
    for j, out in enumerate(body["outputs"]):
        right = labels[order[j]]
        assert out["input"] == j and out["label"] == right and out["image"] is None and out["seed"] is None
        assert set(out["scores"]) == set(labels)
        assert out["scores"][right] == pytest.approx(0, abs=1e-4)
        assert all(out["scores"][k] < out["scores"][right] for k in labels if k != right)
    import redis

    from worker.queue import get_view

    s = client.app.state.settings
    with redis.Redis.from_url(s.redis_url) as conn:  # in meta, where a running job's status reads them
        meta = get_view(conn, job_id, s).meta
    assert meta["labels"] == {str(j): [o["label"], o["scores"]] for j, o in enumerate(body["outputs"])}
    events = client.get(f"/v1/classifications/{job_id}/events").text
    assert "event: done" in events and "event: step" not in events and '"label":"gamma"' in events
    r = client.delete(f"/v1/classifications/{job_id}")
    assert r.status_code == 409 and r.json()["type"].endswith("/already-ended")


def test_classes_with_different_numbers_of_shots(client, checkpoints: Path):
    """A 3-shot class beside a 1-shot one: the support is padded to 3 with a mask; the scores are the model's own."""
    three, one = drawings(3, seed=3), drawings(1, seed=4)
    query = [one[0], three[1], *drawings(2, seed=5)]
    r = classify(client, support(("three", three), ("one", one)), query)
    assert r.status_code == 202, r.text
    outputs = finished(client, r.headers["location"])["outputs"]
    assert outputs[0]["label"] == "one" and outputs[0]["scores"]["one"] == pytest.approx(0, abs=1e-4)
    model = load_checkpoint(checkpoints / MODEL).model
    sets, mask = stack_sets([torch.stack([ink(x) for x in three]), ink(one[0])[None]])
    with torch.inference_mode():
        direct = model.class_scores(sets, torch.stack([ink(x) for x in query]), support_mask=mask)
    assert len(outputs) == len(query) == 4
    for j, out in enumerate(outputs):
        assert out["scores"]["three"] == pytest.approx(direct[j, 0].item(), abs=1e-5)
        assert out["scores"]["one"] == pytest.approx(direct[j, 1].item(), abs=1e-5)
        assert out["label"] == ("three", "one")[int(direct[j].argmax())]


def problem(r, kind: str = "invalid-request") -> dict:
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
    assert r.json()["type"].endswith(f"/{kind}"), r.text
    return r.json()


def test_every_bad_classification_is_a_422_that_says_what(client):
    good = drawings(3, seed=6)
    wrong = np.zeros((SIDE - 2, SIDE), np.uint8)
    p = problem(classify(client, support(("a", good[:1]), ("b", [wrong, good[1]])), good[2:]), "bad-image")
    assert p["detail"].startswith("support[1].images[0]: ") and p["field"] == "support[1].images" and p["image"] == 0
    p = problem(classify(client, support(("a", good[:1]), ("b", good[1:2])), [good[0], good[1], wrong]), "bad-image")
    assert p["detail"].startswith("query[2]: ") and p["image"] == 2
    assert "'a'" in problem(classify(client, support(("a", good[:1]), ("b", good[1:2]), ("a", good[2:])),
                                     good[:1]))["detail"]
    for bad, says in [(support(("a", good)), "support: List should have at least 2 items"),  # one class
                      (support(*((f"c{k}", good[:1]) for k in range(21))), "support: List should have at most 20"),
                      (support(("a", good[:1] * 21), ("b", good[1:2])),
                       "support[0].images: List should have at most 20")]:
        assert problem(classify(client, bad, good[:1]))["detail"].startswith(says)
    assert problem(classify(client, support(("a", good[:1]), ("b", good[1:2])), [good[0]] * 33))["detail"].startswith(
        "query: List should have at most 32 items")
    # the limits themselves are taken: 20 classes, 20 shots (32 queries: the larger-body test below)
    for ok in (support(*((f"c{k}", good[:1]) for k in range(20))), support(("a", good[:1] * 20), ("b", good[1:2]))):
        assert classify(client, ok, good[:1]).status_code == 202
    many = support(*((f"c{k}", drawings(20, seed=k)) for k in range(10)))  # 200 images, and one query
    assert "201 images in all" in problem(classify(client, many, good[:1]))["detail"]
    for label, says in (("", "at least 1 character"), (" ", "at least 1 character"), ("x" * 65, "at most 64"),
                        ("tab\there", "not printable")):
        detail = problem(classify(client, support((label, good[:1]), ("b", good[1:2])), good[:1]))["detail"]
        assert detail.startswith("support[0].label: ") and says in detail, detail
    # whitespace at either end is dropped: " a\t" is the class "a", so it clashes with "a"
    assert "'a'" in problem(classify(client, support(("a", good[:1]), (" a\t", good[1:2])), good[:1]))["detail"]
    p = problem(classify(client, support(("a", good[:1]), ("b", good[1:2])), [np.zeros((12, 10))], model="tiny-draw"))
    assert "cannot classify" in p["detail"] and "'few_shot'" in p["detail"] and "['tiny-stat']" in p["detail"]
    problem(classify(client, support(("a", good[:1]), ("b", good[1:2])), good[:1], model="nope"), "unknown-model")


def test_bad_sets_and_n_with_reconstructions(client):
    good = drawings(1, seed=7)[0]
    r = client.post("/v1/generations", json={"model": MODEL, "images": [png64(good)] * 21})
    assert "a set is 1..20 examples" in problem(r)["detail"]
    r = client.post("/v1/generations", json={"model": MODEL, "images": [png64(good), png64(np.zeros((3, 3)))]})
    assert problem(r, "bad-image")["detail"].startswith("images[1]: ")
    # A model that takes neither says so first (n = 1 with reconstructions: tests/service/test_images_and_likelihoods)
    r = client.post("/v1/generations", json={"model": "tiny-draw", "images": [png64(np.zeros((12, 10)))], "n": 2})
    assert "takes no 'images' condition" in problem(r)["detail"]


def test_classification_bodies_with_images_get_the_larger_limit(client):
    shots = drawings(2, seed=8)
    query = [png64(x, comment="x" * 3000) for x in drawings(32, seed=9)]
    r = classify(client, support(("a", shots[:1]), ("b", shots[1:])), query)
    assert r.status_code == 202, r.text
    assert len(r.request.content) > client.app.state.settings.max_body_bytes
    assert len(finished(client, r.headers["location"])["outputs"]) == 32
