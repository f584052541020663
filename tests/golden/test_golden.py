"""The refactor guard: PNG bytes for fixed seeds from the four shipped DRAW-family generators (those that existed
before the generator contract was built), through the sampler and through the API with a real worker, must stay
what they were when recorded then. (The later families' API outputs are held to their own sampler's bytes by the
service tests, not to a recording.)

A change of model maths, sampling order, noise, rendering or the worker's batching shows up here as a changed digest.
Digests hold for one machine and torch build (float kernels differ across CPUs), so golden.json keeps them per
machine. On a machine without its own, every output must still be there (the same keys, the same frame counts) and
the final images, kept as PNGs, must match within a pixel level or two.

`GLIMPSE_RECORD_GOLDEN=1 pytest tests/golden` records anew after an intended change: this machine's digests and
images replace every machine's. `GLIMPSE_RECORD_GOLDEN=add` adds this machine's digests beside the others, after
its outputs pass the check for a machine without its own.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.sampling import sample
from tests.worker import conftest as worker_fixtures
from tests.worker.conftest import ROOT, wait_for
from worker import render

GOLDEN = Path(__file__).with_name("golden.json")
RECORD = os.environ.get("GLIMPSE_RECORD_GOLDEN")  # "1": record anew; "add": add this machine
SHIPPED = ["aligndraw-mnist-captions", "aligndraw-mnist-captions-blind-keys", "aligndraw-mnist-captions-words",
           "draw-mnist"]
SEEN = "the digit 7 is at the top left of the image ."
SEEDS = [0, 1, 2]

redis_base_url = worker_fixtures.redis_base_url  # the suite's one real Redis


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:24]


def uint8(canvas: torch.Tensor):
    return (canvas * 255).round_().clamp_(0, 255).to(torch.uint8).movedim(-3, -1).numpy()


def captions_for(ckpt) -> list[str] | None:
    """A seen caption twice and the first held-out one (alignDRAW); None for an unconditional model."""
    if ckpt.vocab is None:
        return None
    return [SEEN, SEEN, ckpt.extra["held_out_captions"][0]]


def machine() -> str:
    """What the digests depend on: torch build, the CPU kernels it picks, the CPU's name without its clock ("Intel(R)
    Xeon(R) Processor @ 2.80GHz" is the recorded "Intel(R) Xeon(R) Processor"; the clock changes no kernel)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {cpu.split('@')[0].strip()}"


def pixels(png: bytes):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png))).astype(int)


def check(section: str, found: dict[str, str], images: dict[str, bytes]) -> None:
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    digests: dict[str, dict[str, dict[str, str]]] = golden.setdefault("digests", {})  # machine -> section -> key
    here = machine()
    if RECORD == "1":
        for sections in digests.values():
            sections.pop(section, None)
        digests.setdefault(here, {})[section] = found
        golden.setdefault("images", {})[section] = {k: base64.b64encode(v).decode() for k, v in images.items()}
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    recorded = [sections[section] for sections in digests.values() if section in sections]
    assert recorded, f"no golden digests for {section}: record them (module doc)"
    assert set(found) == set(recorded[0]), f"{section}: other outputs than recorded"
    counts = {k: v for k, v in recorded[0].items() if k.endswith("/frame_count")}  # plain numbers, any machine
    assert {k: found[k] for k in counts} == counts, f"{section}: frame counts changed"
    if RECORD == "add" or section not in digests.get(here, {}):  # another CPU or torch build: pixels, within rounding
        for key, png in golden["images"][section].items():
            a, b = pixels(base64.b64decode(png)), pixels(images[key])
            assert a.shape == b.shape and np.abs(a - b).max() <= 2, f"{section} {key}: pixels moved"
        if RECORD == "add":
            digests.setdefault(here, {})[section] = found
            GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    mine = digests[here][section]
    changed = sorted(k for k in mine if mine[k] != found.get(k))
    assert not changed, f"{section}: {len(changed)} of {len(mine)} outputs changed, e.g. {changed[:5]}"


@pytest.mark.parametrize("name", SHIPPED)
def test_the_sampler_draws_the_recorded_pixels(name):
    ckpt = load_checkpoint(ROOT / "checkpoints" / name)
    captions = captions_for(ckpt)
    conditions = {}
    if captions is not None:
        ids, lengths = ckpt.vocab.encode_batch(captions)
        conditions = {"captions": torch.tensor(ids), "lengths": torch.tensor(lengths)}
    out = sample(ckpt.model, seeds=SEEDS, batch_size=len(SEEDS), **conditions)
    found, images = {}, {}
    frames = uint8(out.canvases)
    for i in range(len(SEEDS)):
        images[f"{i}/image"] = render.png(uint8(out.images[i]))
        found[f"{i}/image"] = digest(images[f"{i}/image"])
        found[f"{i}/frames"] = digest(b"".join(render.png(f) for f in frames[i]))
        windows = out.windows[i].numpy() if out.windows is not None else None
        align = out.alignments[i].numpy() if out.alignments is not None else None
        found[f"{i}/attention"] = digest(render.attention(windows, align, [], max_words=64, longest_word=16))
    check(f"sampler/{name}", found, images)


@pytest.fixture(scope="module")
def shipped_stack(redis_base_url, tmp_path_factory):
    """The API over a real `python -m worker` serving the shipped checkpoints (database 11)."""
    from fastapi.testclient import TestClient

    from service.main import create_app
    from tests.service.conftest import api_settings, running_worker
    from tests.worker.conftest import flushed_db

    db = flushed_db(redis_base_url, 11)
    s = api_settings(next(db), ROOT / "checkpoints", default_model=SHIPPED[1])
    try:
        with running_worker(s, "golden", tmp_path_factory.mktemp("golden"), timeout=120), \
                TestClient(create_app(s)) as client:
            yield client
    finally:
        next(db, None)  # flush the database after use


@pytest.mark.parametrize("name", SHIPPED)
def test_the_api_serves_the_recorded_bytes(name, shipped_stack):
    client = shipped_stack
    captions = captions_for(load_checkpoint(ROOT / "checkpoints" / name))
    body = {"model": name, "n": 1 if captions else 3, "seed": 40}
    if captions:
        body["captions"] = captions[1:]  # one seen, one held out
    created = client.post("/v1/generations", json=body)
    assert created.status_code == 202, created.text
    job = created.json()["id"]

    def finished():
        gen = client.get(f"/v1/generations/{job}").json()
        return gen if gen["status"] in ("succeeded", "failed", "canceled") else None

    gen = wait_for(finished, 300, interval=0.2, what=f"{name} job")
    assert gen["status"] == "succeeded", gen
    found, images = {}, {}
    for out in gen["outputs"]:
        i = out["index"]
        for key in ("image", "animation_gif", "animation_webp", "attention"):
            r = client.get(out[key])
            assert r.status_code == 200
            found[f"{i}/{key}"] = digest(r.content)
        images[f"{i}/image"] = client.get(out["image"]).content
        found[f"{i}/frames"] = digest(b"".join(client.get(url).content for url in out["frames"]))
        found[f"{i}/frame_count"] = str(len(out["frames"]))
    check(f"api/{name}", found, images)
