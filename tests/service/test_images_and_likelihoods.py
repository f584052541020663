"""Images as inputs and the families beyond DRAW, end to end through the API and a real worker on a real Redis:
IWAE and AVB samples, reconstructions of uploaded images, latent walks, likelihood scoring (checked against
models.bounds run directly), VAE/GAN reading uploads as grey levels, and every bad image answered with a 422 that
names it."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from models.avb import AVB, AVBConfig
from models.bounds import importance_weighted
from models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from models.iwae import IWAE, IWAEConfig
from models.sampling import sample
from models.vaegan import VAEGAN, VAEGANConfig
from service.main import create_app
from tests.service.conftest import api_settings, running_worker
from tests.worker.conftest import flushed_db, wait_for

DB = 10
SIDE = 8  # tiny-iwae is 8×8


@pytest.fixture(scope="module")
def served(tmp_path_factory, checkpoints: Path) -> Path:
    """tiny-iwae, tiny-avb (and its full-contrast twin) and tiny-vaegan beside copies of the suite's tiny-draw and
    tiny-align."""
    d = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    iwae = IWAE(IWAEConfig(height=SIDE, width=SIDE, layers=2, k=5, hidden=(16, 8), latent=(4, 3)))
    save_checkpoint(d / "tiny-iwae", Checkpoint(iwae, extra={"dataset": "mnist"}))
    avb = AVB(AVBConfig(height=SIDE, width=SIDE, z_size=3, eps_dim=4, n_basis=3, basis_hidden=(8,), basis_samples=64,
                        conv=(4, 4), deconv=(4, 4), adversary_conv=(), adversary_hidden=(8,)))
    save_checkpoint(d / "tiny-avb", Checkpoint(avb.eval(), extra={"dataset": "mnist"}))
    full = AVB(AVBConfig(**{**avb.config.to_dict(), "contrast": "full"}))  # r_α with the encoder's full covariance
    save_checkpoint(d / "tiny-avb-full", Checkpoint(full.eval(), extra={"dataset": "mnist"}))
    vaegan = VAEGAN(VAEGANConfig(height=SIDE, width=SIDE, z_size=3, base=4))
    with torch.no_grad():  # off the N(0, 0.02) start, so the reconstruction depends visibly on the grey levels
        for p in vaegan.parameters():
            p.add_(0.3 * torch.randn_like(p))
    save_checkpoint(d / "tiny-vaegan", Checkpoint(vaegan.eval(), extra={"dataset": "fashion-mnist"}))
    for name in ("tiny-draw", "tiny-align"):
        shutil.copytree(checkpoints / name, d / name)
    return d


@pytest.fixture(scope="module")
def api(served: Path, redis_base_url: str, tmp_path_factory):
    db = flushed_db(redis_base_url, DB)
    s = api_settings(next(db), served, default_model="tiny-iwae")
    try:
        with running_worker(s, "img-worker", tmp_path_factory.mktemp("iwae-worker")), \
                TestClient(create_app(s)) as client:
            yield client, s
    finally:
        next(db, None)


def png64(pixels: np.ndarray, comment: str = "") -> str:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if comment:
        info.add_text("Comment", comment)  # a text chunk: as a drawing program may write
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


def digits(n: int, side: int = SIDE) -> list[np.ndarray]:
    """Grey test images (some pixels on either side of the 127 threshold)."""
    rng = np.random.default_rng(n)
    return [rng.choice([0, 100, 128, 255], size=(side, side)) for _ in range(n)]


def ink(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((pixels > 127).astype(np.float32))[None]


def finished(client, path: str) -> dict:
    def done():
        body = client.get(path).json()
        return body if body["status"] in ("succeeded", "failed", "canceled") else None

    body = wait_for(done, 60, interval=0.05, what=path)
    assert body["status"] == "succeeded", body
    return body


def pixels_of(client, url: str) -> np.ndarray:
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)))


def test_the_model_list_shows_each_models_modes(api):
    client, _ = api
    models = {m["id"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["tiny-iwae"]["modes"] == {"none": "images", "images": "images", "walk": "frames",
                                            "likelihood": "scores"}
    assert models["tiny-iwae"]["steps"] == 1 and models["tiny-iwae"]["default"]
    assert models["tiny-avb"]["modes"] == models["tiny-iwae"]["modes"] and models["tiny-avb"]["kind"] == "avb"
    assert models["tiny-draw"]["modes"] == {"none": "frames", "likelihood": "scores"}
    assert models["tiny-align"]["modes"] == {"caption": "frames", "likelihood": "scores"}
    assert models["tiny-vaegan"]["modes"] == {"none": "images", "images": "images", "walk": "frames"}  # no scores
    assert models["tiny-vaegan"]["pixels"] == "grey" and models["tiny-iwae"]["pixels"] == "binary"


def test_vaegan_reconstructs_the_grey_levels_it_was_sent(api, served):
    """A grey model reads pixel / 255 (a binary one would threshold at 127): the reconstruction is the model's own
    Dec(μ(x)) of exactly those levels, and differs from that of the thresholded image."""
    client, s = api
    images = digits(2)
    r = client.post("/v1/generations", json={"model": "tiny-vaegan", "images": [png64(x) for x in images]})
    assert r.status_code == 202, r.text
    body = finished(client, r.json()["links"]["self"])
    model = load_checkpoint(served / "tiny-vaegan").model.eval()
    grey = [torch.from_numpy(p.astype(np.float32) / 255)[None] for p in images]
    pad = [torch.zeros(1, SIDE, SIDE)] * (s.batch_rows - 2)
    with torch.no_grad():
        [step] = model.generate(torch.zeros(s.batch_rows, model.z_size), images=torch.stack(grey + pad))
        [binary] = model.generate(torch.zeros(s.batch_rows, model.z_size),
                                  images=torch.stack([ink(p) for p in images] + pad))
    def as_png(logits: torch.Tensor) -> np.ndarray:
        return (torch.sigmoid(logits[:2]) * 255).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()

    expected, thresholded = as_png(step.logits), as_png(binary.logits)
    assert not np.array_equal(expected, thresholded)  # the test can tell the two readings apart
    assert len(body["outputs"]) == 2
    for i, out in enumerate(body["outputs"]):
        assert np.array_equal(pixels_of(client, out["image"]), expected[i])
    r = client.post("/v1/likelihoods", json={"model": "tiny-vaegan", "images": [png64(images[0])]})
    assert r.status_code == 422, r.text  # no likelihood: refused up front, saying so


@pytest.mark.parametrize("model_id", ["tiny-iwae", "tiny-avb"])
def test_unconditional_samples_are_the_samplers_pixels(api, served, model_id):
    client, s = api
    r = client.post("/v1/generations", json={"model": model_id, "n": 3, "seed": 5})
    assert r.status_code == 202, r.text
    body = finished(client, r.json()["links"]["self"])
    assert body["condition"] == "none" and [o["seed"] for o in body["outputs"]] == [5, 6, 7]
    model = load_checkpoint(served / model_id).model
    rows = s.batch_rows  # the worker's fixed sampler shape
    direct = sample(model, seeds=[5, 6, 7] + [0] * (rows - 3), batch_size=rows).images[:3]
    for i, out in enumerate(body["outputs"]):
        assert out["frames"] == [] and out["animation_gif"] is None and out["attention"] is None  # one step
        expected = (direct[i] * 255).round().clamp(0, 255).to(torch.uint8)[0].numpy()
        assert np.array_equal(pixels_of(client, out["image"]), expected)


@pytest.mark.parametrize("model_id", ["tiny-iwae", "tiny-avb", "tiny-avb-full"])
def test_uploaded_images_are_reconstructed_through_the_posterior_means(api, served, model_id):
    client, s = api
    images = digits(2)
    r = client.post("/v1/generations", json={"model": model_id, "images": [png64(x) for x in images]})
    assert r.status_code == 202, r.text
    body = finished(client, r.json()["links"]["self"])
    assert body["condition"] == "images" and [o["input"] for o in body["outputs"]] == [0, 1]
    # deterministic: no seeds, and asking for them is a 422 (a `seed` changes nothing, as for an interpolation)
    assert body["seeds"] == [] and [o["seed"] for o in body["outputs"]] == [None, None]
    r = client.post("/v1/generations", json={"model": model_id, "images": [png64(x) for x in images], "seeds": [1, 2]})
    assert r.status_code == 422 and "reconstructions are deterministic" in r.json()["detail"]
    model = load_checkpoint(served / model_id).model
    x = torch.stack([ink(p) for p in images] + [torch.zeros(1, SIDE, SIDE)] * (s.batch_rows - 2))
    with torch.no_grad():
        [step] = model.generate(torch.zeros(s.batch_rows, model.noise_shape()[0]), images=x)
    expected = (torch.sigmoid(step.logits[:2]) * 255).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    for i, out in enumerate(body["outputs"]):
        assert np.array_equal(pixels_of(client, out["image"]), expected[i])


@pytest.mark.parametrize("model_id", ["tiny-iwae", "tiny-avb"])
def test_a_walk_between_seeds_is_an_animation_that_starts_at_the_first_seeds_sample(api, served, model_id):
    client, s = api
    r = client.post("/v1/generations", json={"model": model_id, "walk": {"seeds": [5, 9], "points": 6}})
    assert r.status_code == 202, r.text
    body = finished(client, r.json()["links"]["self"])
    [out] = body["outputs"]
    assert body["condition"] == "walk" and body["seeds"] == [5, 9] and len(out["frames"]) == 6
    assert client.get(out["animation_gif"]).content[:3] == b"GIF"
    assert client.get(out["animation_webp"]).content[8:12] == b"WEBP"
    frames = [pixels_of(client, f).astype(int) for f in out["frames"]]
    model = load_checkpoint(served / model_id).model
    ends = sample(model, seeds=[5, 9] + [0] * (s.batch_rows - 2), batch_size=s.batch_rows).images[:2]
    ends = (ends * 255).round()[:, 0].numpy()
    assert np.abs(frames[0] - ends[0]).max() <= 1 and np.abs(frames[-1] - ends[1]).max() <= 1
    assert any(np.abs(frames[j] - frames[0]).sum() > 0 for j in range(1, 6))  # it moves


def test_a_walk_between_two_images_and_its_limits(api):
    client, _ = api
    a, b = digits(2)
    r = client.post("/v1/generations", json={"model": "tiny-iwae", "walk": {"images": [png64(a), png64(b)]}})
    assert r.status_code == 202, r.text
    assert len(finished(client, r.json()["links"]["self"])["outputs"][0]["frames"]) == 8  # the default points
    for bad in ({"walk": {"seeds": [1, 2], "images": [png64(a), png64(b)]}}, {"walk": {"seeds": [1]}},
                {"walk": {"seeds": [1, 2], "points": 1}}, {"walk": {"seeds": [1, 2]}, "n": 2},
                {"images": [png64(a)], "n": 2}):  # reconstructions: one per image
        r = client.post("/v1/generations", json={"model": "tiny-iwae", **bad})
        assert r.status_code == 422 and r.json()["type"].endswith("/invalid-request"), (bad, r.text)
        if "n" in bad:
            assert "`n` applies to samples; send n = 1 with `images`, `walk` or `interpolate`" in r.json()["detail"]
    r = client.post("/v1/generations", json={"model": "tiny-draw", "walk": {"seeds": [1, 2]}})
    assert r.status_code == 422 and "takes no 'walk'" in r.json()["detail"]


@pytest.mark.parametrize("model_id", ["tiny-iwae", "tiny-avb", "tiny-avb-full"])
def test_likelihoods_are_models_bounds_on_the_binarised_upload(api, served, model_id):
    client, s = api
    images = digits(3)
    r = client.post("/v1/likelihoods", json={"model": model_id, "images": [png64(x) for x in images], "k": 40,
                                             "seed": 3})
    assert r.status_code == 202, r.text
    assert r.headers["location"].endswith(f"/v1/likelihoods/{r.json()['id']}")
    body = finished(client, r.headers["location"])
    assert body["condition"] == "likelihood" and body["seeds"] == [3]
    model = load_checkpoint(served / model_id).model
    g = torch.Generator().manual_seed(3)
    assert len(body["outputs"]) == 3
    for j, out in enumerate(body["outputs"]):
        lk, elbo = importance_weighted(model, {"x": ink(images[j])[None]}, 40, generator=g)
        assert out["k"] == 40 and out["input"] == j and out["image"] is None
        assert out["nll"] == pytest.approx(-lk.item(), abs=1e-9) and out["elbo"] == pytest.approx(elbo.item(), abs=1e-9)
        assert out["nll"] <= -out["elbo"]  # L_k ≥ the mean log-weight, on the same samples
    import redis

    from worker.queue import get_view

    with redis.Redis.from_url(s.redis_url) as conn:  # each score was written as it came (what a running job shows)
        meta = get_view(conn, body["id"], s).meta
    assert meta["scores"] == {str(j): [o["nll"], o["elbo"]] for j, o in enumerate(body["outputs"])}
    events = client.get(f"/v1/likelihoods/{body['id']}/events").text
    assert "event: done" in events and "event: step" not in events and '"nll"' in events
    for elsewhere in ("generations", "classifications"):  # a job lives under its own collection only
        for method, tail in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
            r = client.request(method, f"/v1/{elsewhere}/{body['id']}{tail}")
            assert r.status_code == 404 and r.json()["type"].endswith("/unknown-job"), (elsewhere, method, tail)
    with redis.Redis.from_url(s.redis_url) as conn:
        conn.delete(f"rq:job:{body['id']}")  # what the result TTL does
    r = client.get(f"/v1/likelihoods/{body['id']}")  # expired: still its own collection's, links and all
    assert r.status_code == 200 and r.json()["status"] == "expired", r.text
    assert r.json()["links"]["self"].endswith(f"/v1/likelihoods/{body['id']}")
    assert "event: expired" in client.get(f"/v1/likelihoods/{body['id']}/events").text
    assert client.delete(f"/v1/likelihoods/{body['id']}").status_code == 409
    for elsewhere in ("generations", "classifications"):
        assert client.get(f"/v1/{elsewhere}/{body['id']}").status_code == 404, elsewhere


def test_likelihoods_of_the_draw_family(api, served):
    """DRAW's and alignDRAW's scores are models.bounds' L_k and mean log-weight of the binarised upload, from the
    job's seed (alignDRAW's under the caption sent: its prior and alignment read it)."""
    client, _ = api
    rng = np.random.default_rng(7)
    draw_image = rng.choice([0, 100, 128, 255], size=(12, 10))
    r = client.post("/v1/likelihoods", json={"model": "tiny-draw", "images": [png64(draw_image)], "k": 4, "seed": 5})
    assert r.status_code == 202, r.text
    out = finished(client, r.headers["location"])["outputs"][0]
    model = load_checkpoint(served / "tiny-draw").model
    lk, elbo = importance_weighted(model, {"x": ink(draw_image)[None]}, 4, generator=torch.Generator().manual_seed(5))
    assert out["nll"] == pytest.approx(-lk.item(), abs=1e-9) and out["elbo"] == pytest.approx(elbo.item(), abs=1e-9)
    assert out["nll"] <= -out["elbo"]
    img = [png64(np.zeros((16, 16)))]
    r = client.post("/v1/likelihoods", json={"model": "tiny-align", "images": img})
    assert r.status_code == 422 and r.json()["type"].endswith("/invalid-request"), r.text
    assert "scores an image under a caption: send `caption`" in r.json()["detail"]
    r = client.post("/v1/likelihoods", json={"model": "tiny-align", "images": img, "caption": "the zebra"})
    assert r.status_code == 422 and r.json()["type"].endswith("/unknown-words")
    align_image = rng.choice([0, 100, 128, 255], size=(16, 16))
    caption = "the digit 3 is at the top left"
    r = client.post("/v1/likelihoods", json={"model": "tiny-align", "images": [png64(align_image)], "k": 3,
                                             "seed": 2, "caption": caption})
    assert r.status_code == 202, r.text
    scored = finished(client, r.headers["location"])
    out = scored["outputs"][0]
    assert out["caption"] == caption and scored["captions"] == [caption]  # the captions as asked
    ckpt = load_checkpoint(served / "tiny-align")
    assert ckpt.vocab is not None
    ids = ckpt.vocab.encode(caption)  # unpadded here (the worker pads to the model's length; padding is masked)
    batch = {"x": ink(align_image)[None], "captions": torch.tensor([ids]), "lengths": torch.tensor([len(ids)])}
    lk, elbo = importance_weighted(ckpt.model, batch, 3, generator=torch.Generator().manual_seed(2))
    assert out["nll"] == pytest.approx(-lk.item(), abs=1e-4) and out["elbo"] == pytest.approx(elbo.item(), abs=1e-4)
    assert out["nll"] <= -out["elbo"]


def bad_image_problem(client, images, model="tiny-iwae", path="/v1/likelihoods") -> dict:
    r = client.post(path, json={"model": model, "images": images})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
    return r.json()


def test_every_bad_image_is_a_422_that_names_it_and_why(api):
    client, _ = api
    good = png64(digits(1)[0])
    wrong_size = bad_image_problem(client, [good, png64(np.zeros((9, 8)))])
    assert wrong_size["type"].endswith("/bad-image") and wrong_size["image"] == 1
    assert "8×9 pixels; this model takes 8×8" in wrong_size["detail"]
    assert wrong_size["expected"] == {"format": "png", "height": 8, "width": 8, "channels": 1}
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="JPEG")
    not_png = bad_image_problem(client, [base64.b64encode(buf.getvalue()).decode()])
    assert "not a PNG" in not_png["detail"] and not_png["image"] == 0
    assert "not valid base64" in bad_image_problem(client, ["***"])["detail"]
    truncated = base64.b64encode(base64.b64decode(good)[:40]).decode()
    assert "not a readable PNG" in bad_image_problem(client, [truncated])["detail"]
    junk = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(100)).decode()  # the magic, then no PNG at all
    detail = bad_image_problem(client, [junk])["detail"]
    assert "not a readable PNG" in detail and " at 0x" not in detail, detail  # no memory address of a buffer
    huge = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(70_000)).decode()
    assert "the limit is 65536" in bad_image_problem(client, [huge])["detail"]
    assert bad_image_problem(client, [good] * 65)["type"].endswith("/invalid-request")  # > 64 images
    rgba = np.zeros((8, 8, 4), np.uint8)  # transparent: composited onto black, accepted
    r = client.post("/v1/likelihoods", json={"model": "tiny-iwae", "images": [png64(rgba)], "k": 2})
    assert r.status_code == 202, r.text
    # Generations check the same way; and a model that takes no images says so.
    assert bad_image_problem(client, [png64(np.zeros((3, 3)))], path="/v1/generations")["image"] == 0
    r = client.post("/v1/generations", json={"model": "tiny-draw", "images": [png64(np.zeros((12, 10)))]})
    assert r.status_code == 422 and "takes no 'images'" in r.json()["detail"]
    for size in ((3, 3), (12, 10)):  # a captioned model too, before any word on the image's size or a caption
        r = client.post("/v1/generations", json={"model": "tiny-align", "images": [png64(np.zeros(size))]})
        assert r.status_code == 422 and "takes no 'images' condition; it takes ['caption'" in r.json()["detail"]
    r = client.post("/v1/generations", json={"model": "tiny-align", "walk": {"images": [good, good]}})
    assert r.status_code == 422 and "takes no 'walk' condition" in r.json()["detail"]
    r = client.post("/v1/likelihoods", json={"model": "tiny-vaegan", "images": [png64(np.zeros((3, 3)))]})
    assert r.status_code == 422 and "gives no likelihood of a single image" in r.json()["detail"]


def test_only_bodies_with_images_get_the_larger_limit(api):
    client, s = api
    padding = "x" * (s.max_body_bytes + 10)
    r = client.post("/v1/generations", json={"model": "tiny-iwae", "n": 1, "pad": padding})
    assert r.status_code == 413 and r.json()["limit_bytes"] == s.max_body_bytes
    # JSON nested deeper than Python's parser recurses is no image body either (it was a 500)
    for path in ("/v1/generations", "/v1/likelihoods", "/v1/classifications"):
        for deep in (b"[" * (s.max_body_bytes + 10), b'{"images":' + b"[" * 40_000 + b"]" * 40_000 + b"}"):
            r = client.post(path, content=deep, headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.json()["limit_bytes"] == s.max_body_bytes, (path, r.text)
    many = [png64(x, comment="x" * 2000) for x in digits(64)]
    r = client.post("/v1/likelihoods", json={"model": "tiny-iwae", "images": many, "k": 1})
    assert r.status_code == 202, r.text  # well over 64 KiB with its images
    assert len(r.request.content) > s.max_body_bytes


def test_a_running_likelihood_job_shows_the_scores_so_far():
    """The worker writes each image's score into the job's meta as it is scored; the status shows them at once, not
    only at the end (the API review saw every nll null until `succeeded`)."""
    from service import store
    from service.config import ApiSettings
    from worker.protocol import JobRequest, Likelihood
    from worker.queue import JobView

    request = JobRequest(model="m", condition=Likelihood(inputs=["inputs/0.png", "inputs/1.png"], k=40), seeds=[3])
    view = JobView(id="j", status="running", step=1, steps=2, attempt=1, seeds=[3],
                   request=request.model_dump(mode="json"), meta={"scores": {"0": [81.5, -83.25]}})
    gen = store.build(None, ApiSettings(redis_url="redis://127.0.0.1:1/0"), view, "http://x")  # type: ignore[arg-type]
    first, second = gen.outputs
    assert (first.nll, first.elbo, first.k, first.input) == (81.5, -83.25, 40, 0)
    assert (second.nll, second.elbo, second.k, second.input) == (None, None, None, 1)


def test_a_running_classification_shows_the_labels_so_far():
    """As for scores: each classified query's label and scores are in the status while the job runs."""
    from service import store
    from service.config import ApiSettings
    from worker.protocol import FewShot, FewShotClass, JobRequest
    from worker.queue import JobView

    condition = FewShot(classes=[FewShotClass(label="a", inputs=["inputs/0.png"]),
                                 FewShotClass(label="b", inputs=["inputs/1.png"])],
                        query=["inputs/2.png", "inputs/3.png"])
    request = JobRequest(model="m", condition=condition)
    view = JobView(id="j", status="running", step=1, steps=2, attempt=1, seeds=[],
                   request=request.model_dump(mode="json"), meta={"labels": {"1": ["b", {"a": -3.5, "b": -0.25}]}})
    gen = store.build(None, ApiSettings(redis_url="redis://127.0.0.1:1/0"), view, "http://x")  # type: ignore[arg-type]
    first, second = gen.outputs
    assert (first.label, first.scores, first.input) == (None, None, 0)
    assert (second.label, second.scores, second.input) == ("b", {"a": -3.5, "b": -0.25}, 1)
