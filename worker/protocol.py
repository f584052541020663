"""The JSON job contract between the API and the worker, the Redis key layout, and the limits.

Torch-free (the API imports it). A job travels through RQ's JSON serializer as one positional argument: the
`JobRequest.model_dump(mode="json")` dict, handed to the importable top-level function `worker.jobs.generate`.

A request carries one condition (a discriminated union on `kind`), and a model says which conditions it takes and
what each returns (`ModelInfo.modes`, from the family's contract in models/family.py):
  none        -> n images (DRAW: every step's canvas as frames)
  caption     -> n images per caption, caption-major: image i draws caption `i // n` with seed `seeds[i]`
  images      -> one reconstruction per uploaded image (families with an encoder)
  walk        -> one output whose frames are the points of a latent path between two seeds or two images
  likelihood  -> per uploaded image −L_k and the ELBO in nats (families with an encoder)
  image_set   -> n new samples of the concept a set of 1..20 uploaded examples shows (the Neural Statistician)
  few_shot    -> per query image the predicted class label and a score per class (labelled support sets)
  text_pair   -> the `points` sentences along the latent path between two sentences, ends included (text families)
A text family's "none" returns n sentences, one per seed, as `text` in result.json (no files).
Uploaded images are stored in the job's files hash as `inputs/{j}.png` before the job is queued; the payload only
names them, so it stays small JSON.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

if TYPE_CHECKING:
    from models.vocab import Vocabulary

JOB_FUNC = "worker.jobs.generate"

MAX_CAPTIONS = 16
MAX_PER_CAPTION = 16  # n
MAX_IMAGES = 64  # outputs per job: captions × n, or uploaded images
MAX_INPUTS = 64  # uploaded images per job (reconstructions, likelihoods)
MAX_INPUT_BYTES = 64 * 1024  # one uploaded PNG, before decoding (a 60×60 RGB PNG is ~11 KB at worst)
MAX_WALK_POINTS = 64  # points of a latent walk, ends included
MAX_K = 5000  # importance samples per image of a likelihood job
MAX_SET_IMAGES = 20  # examples of one image_set generation
# Few-shot classification: 2..20 classes of 1..20 images each, 1..32 query images, 200 uploads in all
MIN_CLASSES = 2
MAX_CLASSES = 20
MAX_SHOTS = 20
MAX_QUERY = 32
MAX_FEW_SHOT_IMAGES = 200
MAX_LABEL_CHARS = 64
MAX_CAPTION_CHARS = 500  # before tokenising; the model's vocabulary also caps tokens (Vocabulary.max_length)
MAX_SCALE = 4
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 5.0  # a text family's sampling temperature (lower: nearer greedy)
MAX_BEAM = 16  # its beam width
SEED_MAX = 2**32 - 1
MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # RQ allows letters, digits, _ and - (no ':')

# What a job, its frames or its result can be in; the API maps RQ's statuses onto these (worker.queue.get_view).
JobState = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})

# no min_length: "" is checked as "  " is, against the vocabulary (EmptyCaptionError), so both read the same 422
Caption = Annotated[str, StringConstraints(max_length=MAX_CAPTION_CHARS)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
InputName = Annotated[str, StringConstraints(pattern=r"^inputs/[0-9]{1,3}\.png$")]
# what a mode returns (models/family.py names the same)
ModeOutput = Literal["frames", "images", "scores", "labels", "text"]


def _printable(label: str) -> str:
    if not label.isprintable():
        raise ValueError(f"label {label!r} has a character that is not printable")
    return label


# whitespace at either end is dropped (str.strip), so "a " and "a" are one class, not two that read the same
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_LABEL_CHARS),
                  AfterValidator(_printable)]


class OutputOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # JSON's own types: no "2" for 2, no true for 1

    frames: bool = True  # offer every step's canvas as a PNG (readable as soon as it is drawn)
    gif: bool = True
    webp: bool = True  # animated, lossless

    @property
    def canvases(self) -> bool:
        """Whether the worker keeps every step's raw canvas: for the frames, or to render an animation from."""
        return self.frames or self.gif or self.webp
    frame_ms: int = Field(80, ge=10, le=2000)  # animation frame duration
    scale: int = Field(1, ge=1, le=MAX_SCALE)  # nearest-neighbour upscaling of every image written


class Decoding(BaseModel):
    """How a text family turns each z into words: greedy (the default, deterministic), sampling from
    softmax(logits / temperature) (sentence i's words drawn with a generator seeded from its seed: prior samples
    only), or beam search of width `beam` on the sentence's log-probability (it favours short sentences)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    strategy: Literal["greedy", "sample", "beam"] = "greedy"
    temperature: float = Field(1.0, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE)
    beam: int = Field(5, ge=1, le=MAX_BEAM)


def word_seed(seed: int) -> int:
    """The seed of a sampled sentence's word draws, a stream other than its z's (torch's CPU generator keeps only a
    seed's low 32 bits, so seed + 2^32 would replay the z draws): the seed xor a constant, a bijection on seeds."""
    return seed ^ 0x9E3779B9


class _Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoCondition(_Condition):
    """Unconditional samples: n images from n seeds."""

    kind: Literal["none"] = "none"


class Captions(_Condition):
    kind: Literal["caption"] = "caption"
    captions: Annotated[list[Caption], Field(min_length=1, max_length=MAX_CAPTIONS)]


def _distinct(inputs: list[str]) -> list[str]:
    if len(set(inputs)) != len(inputs):
        raise ValueError("input names must be distinct")
    return inputs


class Images(_Condition):
    """Reconstructions of uploaded images through the posterior means (deterministic)."""

    kind: Literal["images"] = "images"
    inputs: Annotated[list[InputName], Field(min_length=1, max_length=MAX_INPUTS)]

    @model_validator(mode="after")
    def _check(self) -> Images:
        _distinct(self.inputs)
        return self


class Walk(_Condition):
    """A latent walk of `points` points, ends included: between the job's two seeds (spherical interpolation of
    their noise, which keeps every point a typical prior sample), or between two uploaded images (linear
    interpolation of their encodings)."""

    kind: Literal["walk"] = "walk"
    inputs: Annotated[list[InputName], Field(max_length=2)] = []  # [] : the ends are seeds[0] and seeds[1]
    points: int = Field(8, ge=2, le=MAX_WALK_POINTS)

    @model_validator(mode="after")
    def _check(self) -> Walk:
        if len(self.inputs) not in (0, 2):
            raise ValueError("a walk runs between two images (or two seeds: no images)")
        _distinct(self.inputs)
        return self


class Likelihood(_Condition):
    """Score uploaded images: −L_k (the importance-weighted bound, nats) and the ELBO estimate from the same k
    samples. Captioned families need a caption per image (or one for all)."""

    kind: Literal["likelihood"] = "likelihood"
    inputs: Annotated[list[InputName], Field(min_length=1, max_length=MAX_INPUTS)]
    captions: Annotated[list[Caption], Field(min_length=1)] | None = None
    k: int = Field(100, ge=1, le=MAX_K)

    @model_validator(mode="after")
    def _check(self) -> Likelihood:
        _distinct(self.inputs)
        if self.captions is not None and len(self.captions) not in (1, len(self.inputs)):
            raise ValueError(f"send one caption for all images or one per image ({len(self.inputs)})")
        return self


class ImageSet(_Condition):
    """New samples of the concept a set of uploaded examples shows: each sample's context drawn from q(c | D)."""

    kind: Literal["image_set"] = "image_set"
    inputs: Annotated[list[InputName], Field(min_length=1, max_length=MAX_SET_IMAGES)]

    @model_validator(mode="after")
    def _check(self) -> ImageSet:
        _distinct(self.inputs)
        return self


class FewShotClass(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: Label
    inputs: Annotated[list[InputName], Field(min_length=1, max_length=MAX_SHOTS)]


class FewShot(_Condition):
    """Classify each query image into one of the labelled support sets (its output: the label and every class's
    score). Deterministic: no seeds."""

    kind: Literal["few_shot"] = "few_shot"
    classes: Annotated[list[FewShotClass], Field(min_length=MIN_CLASSES, max_length=MAX_CLASSES)]
    query: Annotated[list[InputName], Field(min_length=1, max_length=MAX_QUERY)]

    @model_validator(mode="after")
    def _check(self) -> FewShot:
        labels = [c.label for c in self.classes]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"labels must be distinct: {', '.join(map(repr, twice))} given more than once")
        _distinct(self.inputs)
        if len(self.inputs) > MAX_FEW_SHOT_IMAGES:
            raise ValueError(f"{len(self.inputs)} images in all; the limit is {MAX_FEW_SHOT_IMAGES}")
        return self

    @property
    def inputs(self) -> list[str]:
        """Every uploaded image: the support sets class by class, then the query."""
        return [x for c in self.classes for x in c.inputs] + list(self.query)


class TextPair(_Condition):
    """The sentences along the latent path between two sentences (a text family): z lerps from one's posterior mean
    to the other's, `points` points with both ends (their reconstructions), each decoded greedily. Deterministic."""

    kind: Literal["text_pair"] = "text_pair"
    texts: Annotated[list[Caption], Field(min_length=2, max_length=2)]  # [from, to]
    points: int = Field(8, ge=2, le=MAX_WALK_POINTS)


Condition = Annotated[NoCondition | Captions | Images | Walk | Likelihood | ImageSet | FewShot | TextPair,
                      Field(discriminator="kind")]


class JobRequest(BaseModel):
    """One job. `captions=[...]` is shorthand for `condition=Captions(captions=[...])`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Annotated[str, StringConstraints(pattern=MODEL_ID)]
    condition: Condition = NoCondition()
    n: int = Field(1, ge=1, le=MAX_PER_CAPTION)
    seeds: list[Seed] | None = None  # see seed_count; drawn by `with_seeds()` when absent, then always recorded
    output: OutputOptions = OutputOptions()
    decoding: Decoding | None = None  # text families only (validate_for_model); None: greedy

    @model_validator(mode="before")
    @classmethod
    def _captions_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "captions" in data:
            data = dict(data)
            captions = data.pop("captions")
            if captions is not None:
                if "condition" in data:
                    raise ValueError("send `captions` or `condition`, not both")
                data["condition"] = {"kind": "caption", "captions": captions}
        return data

    @property
    def captions(self) -> list[str] | None:
        return self.condition.captions if isinstance(self.condition, Captions) else None

    @property
    def images(self) -> int:
        """Outputs of the job (images; scored images for likelihood; one animation for a walk; classified query
        images for few_shot)."""
        c = self.condition
        if isinstance(c, Captions):
            return self.n * len(c.captions)
        if isinstance(c, Images | Likelihood):
            return len(c.inputs)
        if isinstance(c, FewShot):
            return len(c.query)
        if isinstance(c, TextPair):
            return c.points
        return 1 if isinstance(c, Walk) else self.n

    @property
    def seed_count(self) -> int:
        """Seeds the job needs: one per image drawn; a walk's two ends (none between images); one for the
        importance samples of a likelihood job; none where nothing is drawn: reconstructions (through the posterior
        means), classification and a text path."""
        c = self.condition
        if isinstance(c, Walk):
            return 0 if c.inputs else 2
        if isinstance(c, FewShot | TextPair | Images):
            return 0
        return 1 if isinstance(c, Likelihood) else self.images

    @property
    def rows(self) -> int:
        """Model rows the job costs (the timeout's unit): images; walk points; images × k when scoring; every
        uploaded image when classifying."""
        c = self.condition
        if isinstance(c, Walk):
            return c.points
        if isinstance(c, FewShot):
            return len(c.inputs)
        return len(c.inputs) * c.k if isinstance(c, Likelihood) else self.images

    @property
    def inputs(self) -> list[str]:
        """Every uploaded image the job reads (few_shot: the support sets, then the query)."""
        return list(getattr(self.condition, "inputs", []))

    def output_inputs(self) -> list[str | None]:
        """The uploaded image each output came from: the image reconstructed or scored, the query classified; None
        for samples (an image_set's outputs come from the whole set)."""
        c = self.condition
        if isinstance(c, Images | Likelihood):
            return list[str | None](c.inputs)
        if isinstance(c, FewShot):
            return list[str | None](c.query)
        return [None] * self.images

    @model_validator(mode="after")
    def _check(self) -> JobRequest:
        if self.images > MAX_IMAGES:
            raise ValueError(f"{self.images} images requested; the limit is {MAX_IMAGES} per job")
        if self.n != 1 and self.condition.kind not in ("none", "caption", "image_set"):
            raise ValueError(f"n applies to samples; a {self.condition.kind} job takes n = 1")
        # a reconstruction's record from before they took no seeds (2026-12-06) kept one per image: still readable
        legacy = isinstance(self.condition, Images) and self.seeds is not None and len(self.seeds) == self.images
        if self.seeds is not None and len(self.seeds) != self.seed_count and not legacy:
            raise ValueError(f"need {self.seed_count} seed(s) for this job: got {len(self.seeds)}")
        if self.decoding is not None and self.decoding.strategy == "sample" and self.condition.kind != "none":
            raise ValueError("sampled decoding draws each sentence's words from its seed: it applies to samples "
                             "(n sentences), not to an interpolation (use greedy or beam)")
        return self

    def with_seeds(self) -> JobRequest:
        """This request with every seed it needs (kept when given): retries then redraw the same pixels."""
        if self.seeds is not None:
            return self
        return self.model_copy(update={"seeds": [secrets.randbelow(SEED_MAX + 1) for _ in range(self.seed_count)]})

    def output_seeds(self) -> list[int | None]:
        """The seed of each output: its own where outputs are drawn one per seed (samples); None for a walk (its two
        seeds are the path's ends), a likelihood job (one seed for all the samples) and a reconstruction (none)."""
        if self.seeds is None or self.seed_count != self.images:
            return [None] * self.images
        return list[int | None](self.seeds)

    @property
    def texts(self) -> list[str]:
        """Sentences the request gives a text family (text_pair: from and to); checked against its vocabulary."""
        return list(self.condition.texts) if isinstance(self.condition, TextPair) else []

    def image_captions(self) -> list[str | None]:
        """Caption of each output, caption-major (a likelihood job: the caption each image is scored under)."""
        c = self.condition
        if isinstance(c, Captions):
            return [x for x in c.captions for _ in range(self.n)]
        if isinstance(c, Likelihood) and c.captions is not None:
            return list[str | None](c.captions * len(c.inputs) if len(c.captions) == 1 else c.captions)
        return [None] * self.images


class ExampleSet(BaseModel):
    """Drawings of one concept a client may send as a set (a test character the model never read in training)."""

    model_config = ConfigDict(frozen=True)

    name: Label  # what it is, e.g. "Gurmukhi/character42": the page sends it as a classification label
    images: list[str]  # base64 PNGs at the model's size, as uploads are sent


class ModelInfo(BaseModel):
    """The one description of a served model: published in the worker's heartbeat, validated against by the API
    without torch, and shown by GET /v1/models."""

    model_config = ConfigDict(frozen=True)  # the API shares one parsed copy between requests (queue.model_catalog)

    id: str
    kind: str  # the family (models/family.py)
    modes: dict[str, ModeOutput]  # condition kind -> what it returns
    height: int | None = None  # image size; None for a text family, which reads and returns no images
    width: int | None = None
    channels: int | None = None
    steps: int  # steps a generation runs (T for the DRAW family; 1 for one-shot decoders)
    # how an uploaded image is read: thresholded at 127, or grey levels; None for a text family, which reads none
    pixels: Literal["binary", "grey"] | None = "binary"
    # captioned and text families: the words a caption or sentence may use (padding and markers excluded)
    vocabulary: list[str] | None = None
    max_caption_tokens: int | None = None  # words in a caption (a text family: in a sentence it reads)
    example_captions: list[str] = []  # from the checkpoint (training records a few validation captions)
    held_out_captions: list[str] = []  # captions whose combination training never showed
    example_sets: list[ExampleSet] = []  # set models: sets of drawings to pick (`python -m training examples`)

    @cached_property
    def caption_vocab(self) -> Vocabulary:
        """The vocabulary as the model's Vocabulary, built once (a text model's holds 10k words): its captions'
        checks are kept (Vocabulary.check), so a job's caption is tokenised once, not at every check."""
        from models.vocab import Vocabulary

        return Vocabulary(self.vocabulary or [], max_length=self.max_caption_tokens or 1)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of the images it reads and draws; InvalidJobError for a text family."""
        if self.height is None or self.width is None or self.channels is None:
            raise InvalidJobError(f"model {self.id!r} ({self.kind}) reads and writes text, not images")
        return self.height, self.width, self.channels


class Score(BaseModel):
    """One image's likelihood: −L_k and the ELBO estimate (the mean log-weight) from the same k samples, nats."""

    nll: float
    elbo: float
    k: int


class Output(BaseModel):
    """One output of a job, as result.json records it (what is stored, not how to fetch it)."""

    index: int
    seed: int | None = None
    caption: str | None = None
    input: str | None = None  # the uploaded image it came from
    image: bool = False  # images/{index}.png stored
    frames: int = 0  # frames/{index}/{t}.png stored for t = 1..frames
    animations: list[Literal["gif", "webp"]] = []
    attention: bool = False  # attention/{index}.bin stored (the API encodes attention/{index}.json from it)
    score: Score | None = None
    label: str | None = None  # few_shot: the predicted class
    scores: dict[str, float] | None = None  # few_shot: label -> −KL(q(c | query) ‖ q(c | class)) in nats
    text: str | None = None  # text families: the sentence (words separated by spaces)


class JobResult(BaseModel):
    """result.json: written last, so its presence means the job is complete (succeeded or canceled)."""

    job_id: str
    state: JobState
    model: str
    kind: str
    condition: str
    n: int
    seeds: list[int] | None
    steps: int
    steps_done: int
    outputs: list[Output]
    files: list[str]
    bytes: int
    bytes_bound: int
    batch: dict[str, Any]
    worker: str
    attempt: int
    device: str
    finished_at: str
    captions: list[str] | None = None


class InvalidJobError(ValueError):
    """The payload breaks the contract or does not fit the model; the job fails at once and is not retried."""


# ------------------------------------------------------------------------------------------------------------
# Result files. Each job's files live in one Redis hash, field = file name:
#   raw/{i}/{t}            canvas of image i after step t (1-based): its uint8 (H, W, C) bytes at the model's size,
#                          written as soon as step t is drawn (no image encoding on the sampler's path)
#   frames/{i}/{t}.png     that canvas as a PNG: rendered from raw/ by the API on first request, then kept
#   images/{i}.png         final image i (the worker writes it when the image is finished)
#   animations/{i}.gif     all T frames of image i: rendered from raw/ on first request, then kept
#   animations/{i}.webp    same, animated lossless WebP
#   attention/{i}.bin      image i's write windows and alignment as drawn (worker.render.attention_source)
#   attention/{i}.json     {"steps", "windows": (T, 4) write window x0,y0,x1,y1 px, "alignment": (T, K)|null, "words"}:
#                          encoded from attention/{i}.bin by the API on first request, then kept
#   inputs/{j}.png         uploaded image j, as the API checked and normalised it (written before the job is queued)
#   result.json            JobResult; written last, so its presence means "complete"

RESULT_FILE = "result.json"


def raw_name(image: int, step: int) -> str:
    return f"raw/{image}/{step}"


def frame_name(image: int, step: int) -> str:
    return f"frames/{image}/{step}.png"


def image_name(image: int) -> str:
    return f"images/{image}.png"


def animation_name(image: int, fmt: Literal["gif", "webp"]) -> str:
    return f"animations/{image}.{fmt}"


def attention_name(image: int) -> str:
    return f"attention/{image}.json"


def attention_source_name(image: int) -> str:
    return f"attention/{image}.bin"


def input_name(index: int) -> str:
    return f"inputs/{index}.png"


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
    {p}:events:{id}        pub/sub channel: a job's state changed (a step, its end); the message is its state
    """

    def __init__(self, prefix: str = "glimpse"):
        self.prefix = prefix

    def files(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:files"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:cancel"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    @property
    def events_pattern(self) -> str:
        """Every job's channel, for one subscriber per API process (service.events)."""
        return f"{self.prefix}:events:*"

    @property
    def running(self) -> str:
        return f"{self.prefix}:running"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    def worker_models(self, name: str) -> str:
        """The worker's models (a list of ModelInfo as JSON), apart from its beat: written when they change, their
        TTL renewed each beat, so the beat a Redis log records each second stays small (the models are ~150 KB)."""
        return f"{self.prefix}:worker:{name}:models"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def serve_probe(self) -> str:
        """`make serve`'s write probe: its hung-worker watch judges only while Redis takes writes."""
        return f"{self.prefix}:serve:probe"


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


def raw_bound(height: int, width: int, channels: int) -> int:
    """One uint8 canvas, stored uncompressed (worker.render.raw)."""
    return height * width * channels


def gif_bound(height: int, width: int, frames: int) -> int:
    pixels = height * width
    lzw = math.ceil(1.5 * pixels) + 2 * (pixels // 4000 + 2)
    per_frame = lzw + lzw // 255 + 1 + 768 + 8 + 10 + 3
    return 13 + 768 + 19 + 1 + frames * per_frame


def webp_bound(height: int, width: int, channels: int, frames: int) -> int:
    return 1024 + frames * (math.ceil(1.25 * height * width * max(channels, 3)) + 1024)


# A character's bytes in JSON at worst: a surrogate pair of \uXXXX escapes for one outside the Basic Multilingual
# Plane (Python counts it as one character; json.dumps writes 12 ASCII bytes for it).
JSON_CHAR_BYTES = 12


def attention_bound(steps: int, words: int, longest_word: int) -> int:
    return 256 + steps * (4 + words) * 16 + words * (longest_word * JSON_CHAR_BYTES + 4)


def attention_source_bound(steps: int, words: int, longest_word: int) -> int:
    """The arrays at 8 bytes a value at most (float64), and a header like the JSON's words."""
    return 512 + steps * (4 + words) * 8 + words * (longest_word * JSON_CHAR_BYTES + 4)


def job_bytes_bound(request: JobRequest, info: ModelInfo) -> int:
    """Upper bound on the bytes a job stores in Redis (all its files but its inputs), given the model that runs it."""
    returns = info.modes.get(request.condition.kind, "scores")
    summary = 4096 + request.images * 256 + sum(len(x) * JSON_CHAR_BYTES for x in request.image_captions() if x)
    if isinstance(request.condition, FewShot):  # per output its label and every class's label and score
        labels = [c.label for c in request.condition.classes]
        summary += request.images * (max(len(x) for x in labels) * JSON_CHAR_BYTES
                                     + sum(len(x) * JSON_CHAR_BYTES + 32 for x in labels))
    if returns in ("scores", "labels"):
        return summary  # the scores and labels travel inline in result.json
    if returns == "text":  # inline too: at most max_caption_tokens words (Vocabulary.sentence), escaped
        longest = max((len(v) for v in info.vocabulary or []), default=0)
        return summary + request.images * (info.max_caption_tokens or 0) * (longest * JSON_CHAR_BYTES + 1)
    height, width, c = info.shape
    s = request.output.scale
    h, w = height * s, width * s
    per_image = png_bound(h, w, c)
    if returns == "frames":
        t = request.condition.points if isinstance(request.condition, Walk) else info.steps
        words = info.max_caption_tokens or 0
        longest = max((len(v) for v in info.vocabulary or []), default=0)
        per_image += attention_source_bound(t, words, longest) + attention_bound(t, words, longest)  # JSON once asked
        if request.output.canvases:  # the raw canvases the API renders frames and animations from
            per_image += t * raw_bound(height, width, c)
        if request.output.frames:  # each frame's PNG, once a client has asked for it
            per_image += t * png_bound(h, w, c)
        if request.output.gif:
            per_image += gif_bound(h, w, t)
        if request.output.webp:
            per_image += webp_bound(h, w, c, t)
    return request.images * per_image + summary


def check_job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise InvalidJobError(f"job id {job_id!r}: use 1-64 letters, digits, '_' or '-'")
    return job_id


def mode_problem(kind: str, info: ModelInfo) -> str | None:
    """Why the model takes no `kind` condition, in the caller's terms; None when it takes it. The API asks before
    it decodes any uploaded image (a model that takes none should say so, not judge the image's size)."""
    if kind in info.modes:
        return None
    if kind in ("images", "image_set") and info.height is None:
        return f"model {info.id!r} ({info.kind}) reads and writes text, not images"
    if kind == "caption" and "text_pair" in info.modes:  # a text model: captions are what it writes
        return (f"model {info.id!r} ({info.kind}) writes sentences: send `n` for samples, or `interpolate` with two "
                "sentences; no captions")
    if kind == "caption" and "none" in info.modes:
        return f"model {info.id!r} is unconditional ({info.kind}): send no captions"
    if "caption" in info.modes and kind == "none":
        return f"model {info.id!r} draws captions ({info.kind}): send 1..{MAX_CAPTIONS} captions"
    if kind == "likelihood":
        return (f"model {info.id!r} ({info.kind}) gives no likelihood of a single image; its modes are "
                f"{sorted(info.modes)}")
    if kind == "few_shot":
        return (f"model {info.id!r} ({info.kind}) cannot classify: few-shot classification needs a model with "
                f"'few_shot' in its modes; its modes are {sorted(info.modes)}")
    return f"model {info.id!r} ({info.kind}) takes no {kind!r} condition; it takes {sorted(info.modes)}"


def validate_for_model(request: JobRequest, info: ModelInfo, *, max_job_bytes: int) -> None:
    """Checks what needs the model: its modes against the condition, the caption vocabulary, the result size.
    Raises InvalidJobError. Torch-free: the API runs it with the ModelInfo from a worker's heartbeat; the worker
    runs it again. (Uploaded images are checked where they are decoded: worker.inputs.)"""
    from models.vocab import CaptionError

    kind = request.condition.kind
    captioned = "caption" in info.modes
    problem = mode_problem(kind, info)
    if problem is not None:
        raise InvalidJobError(problem)
    captions = request.captions or request.texts or None
    if isinstance(request.condition, Likelihood):
        captions = request.condition.captions
        if captioned and captions is None:
            raise InvalidJobError(f"model {info.id!r} scores an image under a caption: send `caption` (one for every "
                                  "image) or `captions` (one per image)")
        if not captioned and captions is not None:
            raise InvalidJobError(f"model {info.id!r} ({info.kind}) takes no captions")
    if captions is not None:
        vocab = info.caption_vocab
        for j, caption in enumerate(captions):
            try:
                vocab.check(caption)
            except CaptionError as e:
                raise InvalidJobError(f"{'text' if request.texts else 'caption'} {j}: {e}") from e
    if request.decoding is not None and info.modes[kind] != "text":
        raise InvalidJobError(f"`decoding` applies to text models; model {info.id!r} ({info.kind}) returns "
                              f"{info.modes[kind]}")
    if isinstance(request.condition, Walk) and request.condition.inputs and "images" not in info.modes:
        raise InvalidJobError(f"model {info.id!r} ({info.kind}) cannot encode images: walk between seeds")
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
