"""A text family (the text VAE) through the API, a real worker and a real Redis: n sentences from the prior, the
sentences between two sentences (`interpolate`), each the worker's decoding recomputed here, and every bad request
answered with a 422 that names what is wrong."""

from __future__ import annotations

from pathlib import Path

import torch

from models.checkpoint import load_checkpoint
from models.sampling import draw_noise, lerp
from tests.service.test_images_and_likelihoods import finished, png64
from tests.service.test_sets_and_classifications import drawings
from worker.conditions import pad_rows, sentences
from worker.protocol import word_seed
from worker.queue import get_view

MODEL = "tiny-text"
FROM = "the digit 3 is at the top left of the image"
TO = "the digit 8 is at the bottom right of the image"


def decoded(checkpoints: Path, z: torch.Tensor, rows: int) -> list[str]:
    """What the worker's one decoder call gives for these z: `rows` rows (padding after), greedy, as words."""
    ckpt = load_checkpoint(checkpoints / MODEL)
    assert ckpt.vocab is not None
    with torch.inference_mode():
        (step,) = ckpt.model.generate(pad_rows(z, rows))
    return [ckpt.vocab.sentence(row, max_words=ckpt.vocab.max_length) for row in step.tokens[: z.shape[0]].tolist()]


def test_the_model_list_shows_a_text_model(client):
    m = {m["id"]: m for m in client.get("/v1/models").json()["models"]}[MODEL]
    assert m["kind"] == "textvae" and m["modes"] == {"none": "text", "text_pair": "text"}
    assert (m["height"], m["width"], m["channels"]) == (None, None, None)
    assert "digit" in m["vocabulary"] and "<eos>" not in m["vocabulary"] and m["max_caption_tokens"] == 12


def test_sentences_from_the_prior_are_the_decoders_and_seeded(client, conn, checkpoints: Path):
    body = {"model": MODEL, "n": 5, "seed": 40}
    r = client.post("/v1/generations", json=body)
    assert r.status_code == 202, r.text
    done = finished(client, r.headers["location"])
    view = get_view(conn, done["id"], client.app.state.settings)
    assert view.meta["state"] == "succeeded" and "frame_shape" not in view.meta  # a text job draws no frames
    assert done["condition"] == "none" and done["images"] == 5 and done["seeds"] == [40, 41, 42, 43, 44]
    outs = done["outputs"]
    assert [o["seed"] for o in outs] == [40, 41, 42, 43, 44]
    assert all(o["image"] is None and o["frames"] == [] and o["animation_gif"] is None for o in outs)
    texts = [o["text"] for o in outs]
    assert all(isinstance(t, str) and len(t.split()) <= 12 for t in texts) and len(set(texts)) > 1
    rows = client.app.state.settings.batch_rows
    assert texts == decoded(checkpoints, draw_noise(5, 3, seeds=[40, 41, 42, 43, 44]), rows)
    again = finished(client, client.post("/v1/generations", json=body).headers["location"])
    assert [o["text"] for o in again["outputs"]] == texts


def test_interpolation_runs_from_one_sentences_reconstruction_to_the_others(client, checkpoints: Path):
    r = client.post("/v1/generations", json={"model": MODEL, "interpolate": {"from": FROM, "to": TO, "points": 6}})
    assert r.status_code == 202, r.text
    done = finished(client, r.headers["location"])
    assert done["condition"] == "text_pair" and done["images"] == 6 and done["seeds"] == []
    texts = [o["text"] for o in done["outputs"]]
    ckpt = load_checkpoint(checkpoints / MODEL)
    assert ckpt.vocab is not None
    given = sentences(ckpt.vocab, [FROM, TO])
    assert given["lengths"].tolist() == [12, 12]  # eleven words and <eos>
    with torch.inference_mode():
        ends = ckpt.model.encode_noise(given["texts"], given["lengths"])
    rows = client.app.state.settings.batch_rows
    assert texts == decoded(checkpoints, lerp(ends[0], ends[1], 6), rows)
    assert texts[0] == decoded(checkpoints, ends[:1], rows)[0] and texts[-1] == decoded(checkpoints, ends[1:], rows)[0]
    assert texts[0] != texts[-1]  # the path goes somewhere (so the order of its ends is checked)
    # Number words are the numerals they mean (alignDRAW's tokeniser): the same path
    spelled = {"from": FROM.replace("3", "three"), "to": TO.replace("8", "Eight"), "points": 6}
    other = finished(client, client.post("/v1/generations", json={"model": MODEL, "interpolate": spelled})
                     .headers["location"])
    assert [o["text"] for o in other["outputs"]] == texts
    # A sentence as the model writes it reads back, <unk> and all (the tokeniser split it into "<", "unk", ">")
    unknown = {"from": FROM.replace("digit", "<unk>"), "to": TO, "points": 2}
    r = client.post("/v1/generations", json={"model": MODEL, "interpolate": unknown})
    assert r.status_code == 202, r.text
    assert finished(client, r.headers["location"])["status"] == "succeeded"


def test_sampled_and_beam_decodings_are_the_models_own(client, checkpoints: Path):
    """`decoding`: sampled sentences draw their words from a generator seeded by word_seed(seed), each row alone (so
    a sentence is the same in any job); beam search runs on the worker's padded rows."""
    ckpt = load_checkpoint(checkpoints / MODEL)
    assert ckpt.vocab is not None
    seeds = [40, 41, 42, 43]
    z = draw_noise(4, 3, seeds=seeds)
    body = {"model": MODEL, "n": 4, "seed": 40, "decoding": {"strategy": "sample", "temperature": 1.5}}
    done = finished(client, client.post("/v1/generations", json=body).headers["location"])
    texts = [o["text"] for o in done["outputs"]]
    with torch.inference_mode():
        own = [ckpt.model.decode(z[i : i + 1], strategy="sample", temperature=1.5,
                                 generator=torch.Generator().manual_seed(word_seed(s)))[0] for i, s in enumerate(seeds)]
    assert texts == [ckpt.vocab.sentence(row.tolist(), max_words=ckpt.vocab.max_length) for row in own]
    greedy = decoded(checkpoints, z, client.app.state.settings.batch_rows)
    assert texts != greedy  # sampling at 1.5 is not the argmax (it would be at a vanishing temperature)
    alone = finished(client, client.post("/v1/generations", json={**body, "n": 1, "seed": 42}).headers["location"])
    assert alone["outputs"][0]["text"] == texts[2]  # sentence 2 of the batch, drawn alone
    beam = {"model": MODEL, "interpolate": {"from": FROM, "to": TO, "points": 3},
            "decoding": {"strategy": "beam", "beam": 3}}
    done = finished(client, client.post("/v1/generations", json=beam).headers["location"])
    given = sentences(ckpt.vocab, [FROM, TO])
    with torch.inference_mode():
        ends = ckpt.model.encode_noise(given["texts"], given["lengths"])
        rows = client.app.state.settings.batch_rows
        own_beam = ckpt.model.decode(pad_rows(lerp(ends[0], ends[1], 3), rows), strategy="beam", beam=3)[:3]
    expected = [ckpt.vocab.sentence(r, max_words=ckpt.vocab.max_length) for r in own_beam.tolist()]
    assert [o["text"] for o in done["outputs"]] == expected


def test_bad_text_requests_are_422s_that_say_what_is_wrong(client):
    def post(body: dict):
        return client.post("/v1/generations", json={"model": MODEL, **body})

    r = post({"interpolate": {"from": "the digit 3 is at the zebra", "to": "the digit qux is ."}})
    assert r.status_code == 422 and r.json()["type"].endswith("unknown-words")
    assert "'zebra' (interpolate.from, position 6)" in r.json()["detail"]
    assert "'qux' (interpolate.to, position 2)" in r.json()["detail"]
    assert [(u["caption"], u["word"]) for u in r.json()["unknown_words"]] == [(0, "zebra"), (1, "qux")]
    r = post({"interpolate": {"from": " ".join(["the"] * 13), "to": TO}})
    assert r.status_code == 422 and r.json()["type"].endswith("caption-too-long")
    assert "interpolate.from has 13 tokens" in r.json()["detail"]
    r = post({"interpolate": {"from": "?!", "to": TO}})
    assert r.status_code == 422 and r.json()["type"].endswith("unknown-words")
    for empty in (" ", ""):
        r = post({"interpolate": {"from": FROM, "to": empty}})
        assert r.status_code == 422 and r.json()["type"].endswith("empty-caption"), r.text
        assert r.json()["detail"] == "interpolate.to has no words"
    for body, says in [
        ({"interpolate": {"from": FROM, "to": TO}, "n": 2}, "n = 1"),
        ({"interpolate": {"from": FROM, "to": TO, "points": 1}}, "points"),
        ({"interpolate": {"from": FROM, "to": TO, "points": 65}}, "points"),
        ({"interpolate": {"from": FROM}}, "interpolate.to"),
        ({"interpolate": {"from": FROM, "to": TO, "via": TO}}, "via"),
        ({"interpolate": {"from": FROM, "to": TO}, "caption": FROM}, "one of"),
        ({"caption": FROM}, "writes sentences: send `n` for samples, or `interpolate` with two sentences"),
        ({"walk": {"seeds": [1, 2]}}, "takes no 'walk'"),
        ({"images": [png64(drawings(1, seed=0)[0])]}, "reads and writes text, not images"),
        ({"n": 17}, "n: Input should be less than or equal to 16"),
        ({"interpolate": {"from": FROM, "to": TO}, "decoding": {"strategy": "sample"}}, "applies to samples"),
        ({"decoding": {"strategy": "sample", "temperature": 0}}, "temperature"),
        ({"decoding": {"strategy": "beam", "beam": 17}}, "beam"),
        ({"decoding": {"strategy": "top-k"}}, "strategy"),
        ({"interpolate": {"from": FROM, "to": TO}, "seeds": [1, 2]}, "an interpolation takes none"),
        ({"interpolate": {"from_": FROM, "to": TO}}, "interpolate.from"),  # the Python attribute's name is no API field
    ]:
        r = post(body)
        assert r.status_code == 422 and r.json()["type"].endswith("/invalid-request"), (body, r.text)
        assert says in r.json()["detail"], (body, r.text)
        assert "pydantic" not in r.text and "input_value" not in r.text, r.text  # the message, not the library's
    r = post({"interpolate": {"from": FROM, "to": TO, "points": 2}, "seed": 5})  # no noise drawn: seed is moot
    assert r.status_code == 202 and r.json()["seeds"] == [], r.text
    r = client.post("/v1/generations", json={"model": "tiny-draw", "interpolate": {"from": FROM, "to": TO}})
    assert r.status_code == 422 and "takes no 'text_pair'" in r.json()["detail"]
    r = client.post("/v1/generations", json={"model": "tiny-draw", "n": 2, "decoding": {"strategy": "beam"}})
    assert r.status_code == 422 and "`decoding` applies to text models" in r.json()["detail"]
