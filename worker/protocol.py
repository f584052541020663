"""The JSON job contract between the API and the worker, the Redis key layout, and the limits.

Torch-free (the API imports it). A job travels through RQ's JSON serializer as one positional argument: the
`JobRequest.model_dump(mode="json")` dict, handed to the importable top-level function `worker.jobs.generate`.

Images of a job are ordered caption-major: image i draws caption `i // n` with seed `seeds[i]`.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

JOB_FUNC = "worker.jobs.generate"

MAX_CAPTIONS = 16
MAX_PER_CAPTION = 16  # n
MAX_IMAGES = 64  # captions × n
MAX_CAPTION_CHARS = 500  # before tokenising; the model's vocabulary also caps tokens (Vocabulary.max_length)
MAX_SCALE = 4
SEED_MAX = 2**32 - 1
MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # RQ allows letters, digits, _ and - (no ':')

# What a job, its frames or its result can be in; the API maps RQ's statuses onto these (worker.queue.get_view).
JobState = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})

Caption = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CAPTION_CHARS)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class OutputOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    frames: bool = True  # keep every step's canvas as a PNG (written as it is drawn)
    gif: bool = True
    webp: bool = True  # animated, lossless
    frame_ms: int = Field(80, ge=10, le=2000)  # animation frame duration
    scale: int = Field(1, ge=1, le=MAX_SCALE)  # nearest-neighbour upscaling of every image written


class JobRequest(BaseModel):
    """One generation job. `captions=None` asks an unconditional (DRAW) model for `n` images."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Annotated[str, StringConstraints(pattern=MODEL_ID)]
    captions: Annotated[list[Caption], Field(min_length=1, max_length=MAX_CAPTIONS)] | None = None
    n: int = Field(1, ge=1, le=MAX_PER_CAPTION)
    seeds: list[Seed] | None = None  # one per image; drawn by `with_seeds()` when absent, then always recorded
    output: OutputOptions = OutputOptions()

    @property
    def images(self) -> int:
        return self.n * (len(self.captions) if self.captions is not None else 1)

    @model_validator(mode="after")
    def _check(self) -> JobRequest:
        if self.images > MAX_IMAGES:
            raise ValueError(f"{self.images} images requested; the limit is {MAX_IMAGES} per job")
        if self.seeds is not None and len(self.seeds) != self.images:
            raise ValueError(f"need one seed per image: got {len(self.seeds)} seeds for {self.images} images")
        return self

    def with_seeds(self) -> JobRequest:
        """This request with a seed for every image (kept when given): retries then redraw the same pixels."""
        if self.seeds is not None:
            return self
        return self.model_copy(update={"seeds": [secrets.randbelow(SEED_MAX + 1) for _ in range(self.images)]})

    def image_captions(self) -> list[str | None]:
        """Caption of each image, caption-major."""
        if self.captions is None:
            return [None] * self.n
        return [c for c in self.captions for _ in range(self.n)]


class ModelInfo(BaseModel):
    """What a worker serves, published in its heartbeat so the API can validate without torch."""

    id: str
    kind: Literal["draw", "aligndraw"]
    height: int
    width: int
    channels: int
    steps: int  # T
    vocabulary: list[str] | None = None  # alignDRAW: the words it knows (index 0 padding excluded)
    max_caption_tokens: int | None = None
    example_captions: list[str] = []  # from the checkpoint (training records a few validation captions)
    held_out_captions: list[str] = []  # captions whose combination training never showed


class InvalidJobError(ValueError):
    """The payload breaks the contract or does not fit the model; the job fails at once and is not retried."""


# ------------------------------------------------------------------------------------------------------------
# Result files. Each job's files live in one Redis hash, field = file name:
#   frames/{i}/{t}.png     canvas of image i after step t (1-based), written as soon as step t is drawn
#   images/{i}.png         final image i
#   animations/{i}.gif     all T frames of image i
#   animations/{i}.webp    same, animated lossless WebP
#   attention/{i}.json     {"steps", "windows": (T, 4) write window x0,y0,x1,y1 px, "alignment": (T, K)|null, "words"}
#   result.json            the summary the job returns; written last, so its presence means "complete"

RESULT_FILE = "result.json"


def frame_name(image: int, step: int) -> str:
    return f"frames/{image}/{step}.png"


def image_name(image: int) -> str:
    return f"images/{image}.png"


def animation_name(image: int, fmt: Literal["gif", "webp"]) -> str:
    return f"animations/{image}.{fmt}"


def attention_name(image: int) -> str:
    return f"attention/{image}.json"


CONTENT_TYPES = {"png": "image/png", "gif": "image/gif", "webp": "image/webp", "json": "application/json"}


def content_type(name: str) -> str:
    return CONTENT_TYPES[name.rsplit(".", 1)[-1]]


class Keys:
    """Our Redis key layout (RQ's own keys stay under `rq:`).

    {p}:job:{id}:files     hash  file name -> bytes (above); TTL: result_ttl after the end (+ job_timeout while running)
    {p}:job:{id}:cancel    str   present = cancel requested; checked after every step
    {p}:running            hash  job id -> JSON owner record {"worker", "attempt", "since"} while a worker holds it
    {p}:worker:{name}      str   JSON heartbeat, TTL heartbeat_ttl, refreshed every heartbeat_interval
    {p}:workers            set   names that sent a heartbeat (pruned when their key is gone)
    """

    def __init__(self, prefix: str = "glimpse"):
        self.prefix = prefix

    def files(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:files"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:cancel"

    @property
    def running(self) -> str:
        return f"{self.prefix}:running"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"


# ------------------------------------------------------------------------------------------------------------
# Byte bound. Worst cases of the encoders as configured in worker.render (checked there on every file written,
# and against incompressible noise in tests/worker/test_render.py):
#   PNG (8-bit, one IDAT stream): zlib's deflateBound over the filtered rows + chunk framing.
#   GIF: LZW codes are at most 12 bits and each covers ≥ 1 pixel → ≤ 1.5 bytes/pixel, + 255-byte sub-blocks,
#        clear codes, a local palette and the frame headers.
#   WebP (lossless VP8L, frames stored as RGB): on noise measured ≤ 1.12 bytes/pixel (grey) and ≤ 1.0 per colour
#        channel; bounded at 1.25 × 3 bytes/pixel + 1 KiB per frame.
#   JSON: every number printed with ≤ 4 decimals (≤ 16 chars with separators).


def png_bound(height: int, width: int, channels: int) -> int:
    raw = height * (width * channels + 1)  # one filter byte per row
    deflate = raw + (raw >> 12) + (raw >> 14) + (raw >> 25) + 13 + 6
    return 8 + 25 + 12 + deflate + 12 * (deflate // 8192 + 1) + 256


def gif_bound(height: int, width: int, frames: int) -> int:
    pixels = height * width
    lzw = math.ceil(1.5 * pixels) + 2 * (pixels // 4000 + 2)
    per_frame = lzw + lzw // 255 + 1 + 768 + 8 + 10 + 3
    return 13 + 768 + 19 + 1 + frames * per_frame


def webp_bound(height: int, width: int, channels: int, frames: int) -> int:
    return 1024 + frames * (math.ceil(1.25 * height * width * max(channels, 3)) + 1024)


def attention_bound(steps: int, words: int, longest_word: int) -> int:
    return 256 + steps * (4 + words) * 16 + words * (longest_word * 6 + 4)  # \uXXXX escapes at worst


def job_bytes_bound(request: JobRequest, info: ModelInfo) -> int:
    """Upper bound on the bytes a job stores in Redis (all its files), given the model that runs it."""
    s = request.output.scale
    h, w, c, t = info.height * s, info.width * s, info.channels, info.steps
    words = info.max_caption_tokens or 0
    longest = max((len(v) for v in info.vocabulary or []), default=0)
    per_image = png_bound(h, w, c) + attention_bound(t, words, longest)
    if request.output.frames:
        per_image += t * png_bound(h, w, c)
    if request.output.gif:
        per_image += gif_bound(h, w, t)
    if request.output.webp:
        per_image += webp_bound(h, w, c, t)
    summary = 4096 + request.images * 64 + sum(len(x) * 6 for x in request.captions or [])
    return request.images * per_image + summary


def check_job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise InvalidJobError(f"job id {job_id!r}: use 1-64 letters, digits, '_' or '-'")
    return job_id


def validate_for_model(request: JobRequest, info: ModelInfo, *, max_job_bytes: int) -> None:
    """Checks what needs the model: kind vs captions, the caption vocabulary, the result size. Raises InvalidJobError.

    Torch-free: the API runs it with the ModelInfo from a worker's heartbeat; the worker runs it again.
    """
    from models.vocab import CaptionError, Vocabulary

    if info.kind == "draw" and request.captions is not None:
        raise InvalidJobError(f"model {info.id!r} is unconditional (DRAW): send no captions")
    if info.kind == "aligndraw":
        if request.captions is None:
            raise InvalidJobError(f"model {info.id!r} draws captions (alignDRAW): send 1..{MAX_CAPTIONS} captions")
        vocab = Vocabulary(info.vocabulary or [], max_length=info.max_caption_tokens or 1)
        for j, caption in enumerate(request.captions):
            try:
                vocab.check(caption)
            except CaptionError as e:
                raise InvalidJobError(f"caption {j}: {e}") from e
    bound = job_bytes_bound(request, info)
    if bound > max_job_bytes:
        raise InvalidJobError(f"results could reach {bound} bytes; the limit is {max_job_bytes} (lower n or scale)")


def parse_request(payload: object) -> JobRequest:
    """The worker's re-check of a payload it dequeued; raises InvalidJobError with pydantic's message."""
    from pydantic import ValidationError

    if not isinstance(payload, dict):
        raise InvalidJobError(f"job payload must be a JSON object, got {type(payload).__name__}")
    try:
        request = JobRequest.model_validate(payload)
    except ValidationError as e:
        errors = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'payload'}: {err['msg']}" for err in e.errors())
        raise InvalidJobError(f"invalid job: {errors}") from None
    if request.seeds is None:
        raise InvalidJobError("invalid job: seeds missing (enqueue with worker.queue.enqueue_generation)")
    return request


def padded_rows(images: int, batch_rows: int) -> int:
    """Rows the sampler runs for a job alone: whole chunks of `batch_rows`."""
    return batch_rows * math.ceil(images / batch_rows)


def chunked(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]
