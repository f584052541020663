"""Request and response bodies of the HTTP API (OpenAPI examples included)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from worker.protocol import (
    MAX_CAPTIONS,
    MAX_CLASSES,
    MAX_FEW_SHOT_IMAGES,
    MAX_IMAGES,
    MAX_INPUT_BYTES,
    MAX_INPUTS,
    MAX_K,
    MAX_LABEL_CHARS,
    MAX_PER_CAPTION,
    MAX_QUERY,
    MAX_SET_IMAGES,
    MAX_SHOTS,
    MAX_WALK_POINTS,
    MIN_CLASSES,
    SEED_MAX,
    Caption,
    Decoding,
    Label,
    ModelInfo,
    OutputOptions,
)

SeedIn = Annotated[int, Field(ge=0, le=SEED_MAX)]
Status = Literal["queued", "running", "succeeded", "failed", "canceled", "expired"]
# base64 of a PNG (a `data:image/png;base64,` prefix is accepted); checked against the model by worker.inputs,
# whose 422 names the image and says why (its size too: the body limit bounds what is read at all).
ImageData = Annotated[str, StringConstraints(min_length=1)]
IMAGES_DOC = (f"base64 PNGs of exactly the model's height × width (GET /v1/models), ≤ {MAX_INPUT_BYTES} bytes "
              "each; grey models convert colour to grey; pixel > 127 counts as ink")


class WalkIn(BaseModel):
    """A latent walk: between two seeds (`seeds`), or between two uploaded images (`images`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    seeds: Annotated[list[SeedIn], Field(min_length=2, max_length=2)] | None = None
    images: Annotated[list[ImageData], Field(min_length=2, max_length=2, description=IMAGES_DOC)] | None = None
    points: int = Field(8, ge=2, le=MAX_WALK_POINTS, description="points of the path, both ends included")

    @model_validator(mode="after")
    def _check(self) -> WalkIn:
        if (self.seeds is None) == (self.images is None):
            raise ValueError("a walk needs `seeds` (two) or `images` (two), not both")
        return self


class InterpolateIn(BaseModel):
    """The sentences along a text model's latent path between two sentences (the two ends reconstructed)."""

    # "from" only: the attribute's name "from_" is no field of the API
    model_config = ConfigDict(extra="forbid", strict=True)

    from_: Caption = Field(alias="from", description="the first sentence, in the model's vocabulary (GET /v1/models)")
    to: Caption = Field(description="the last sentence")
    points: int = Field(8, ge=2, le=MAX_WALK_POINTS, description="sentences on the path, both ends included")


N_ONE = "`n` applies to samples; send n = 1 with `images`, `walk` or `interpolate`"


class GenerationCreate(BaseModel):
    """`caption` or `captions` (alignDRAW); nothing for unconditional samples (DRAW, IWAE; a text model: n sentences);
    `images` for reconstructions (IWAE, VAE/GAN), or for new samples of the concept they show (a model with
    `image_set` in its modes: the Neural Statistician); `walk` for a latent walk (IWAE); `interpolate` for the
    sentences between two sentences (a text model). `n` samples per caption (or in all)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"caption": "the digit 3 is at the top left of the image", "n": 4},
        {"model": "statistician-omniglot", "images": ["iVBORw0KGgo...", "iVBORw0KGgo..."], "n": 8, "seed": 7},
        {"model": "textvae-captions", "n": 8, "seed": 3},
        {"model": "textvae-captions", "n": 8, "decoding": {"strategy": "sample", "temperature": 0.8}},
        {"model": "textvae-captions", "interpolate": {"from": "the digit 3 is at the top left of the image .",
                                                      "to": "the digit 8 is at the bottom right of the image .",
                                                      "points": 8}},
        {"model": "aligndraw-mnist-captions", "captions": ["the digit 7 is at the bottom right of the image",
                                                         "the digit 1 is at the top of the image"],
         "n": 2, "seed": 1234, "output": {"frames": True, "gif": True, "webp": False, "frame_ms": 60, "scale": 2}},
    ]})

    model: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        None, description="Model id from GET /v1/models; default: `aligndraw-mnist-captions-blind-keys` "
                        "(GLIMPSE_DEFAULT_MODEL)")
    caption: Caption | None = None
    captions: Annotated[list[Caption], Field(min_length=1, max_length=MAX_CAPTIONS)] | None = None
    images: Annotated[list[ImageData], Field(
        min_length=1, max_length=MAX_INPUTS, description=f"{IMAGES_DOC}. Reconstruction models: one output per image "
        f"(n = 1); `image_set` models: 1..{MAX_SET_IMAGES} examples of one concept, n new samples of it")] | None = None
    walk: WalkIn | None = None
    interpolate: InterpolateIn | None = None
    n: int = Field(1, ge=1, le=MAX_PER_CAPTION, description=f"images per caption (≤ {MAX_IMAGES} in all)")
    seed: int | None = Field(None, ge=0, le=SEED_MAX - MAX_IMAGES,
                             description="image i gets seed + i; drawn at random when absent (returned either way)")
    seeds: Annotated[list[SeedIn], Field(min_length=1, max_length=MAX_IMAGES)] | None = Field(
        None, description="instead of `seed`: one seed per image, in output order (a seed may repeat, e.g. to draw "
                          "several captions from one noise)")
    output: OutputOptions = OutputOptions()
    decoding: Decoding | None = Field(None, description="text models: `greedy` (the default), `sample` at "
                                      "`temperature` (prior samples; each sentence's words from its seed) or `beam` "
                                      "of width `beam`")

    @model_validator(mode="after")
    def _check(self) -> GenerationCreate:
        if self.caption is not None and self.captions is not None:
            raise ValueError("send `caption` or `captions`, not both")
        given = [name for name in ("caption_list", "images", "walk", "interpolate") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError("send one of captions, `images`, `walk` or `interpolate`")
        # `images` with n: the model decides (reconstructions take n = 1, samples of a set's concept any n)
        if self.seed is not None and self.seeds is not None:
            raise ValueError("send `seed` or `seeds`, not both")
        if self.seeds is not None and given and given[0] in ("walk", "interpolate"):
            raise ValueError("a walk takes its seeds in `walk.seeds`; an interpolation takes none")
        if self.seed is not None and given and given[0] == "walk":  # it would change nothing: say so
            raise ValueError("a walk takes its seeds in `walk.seeds`, not `seed`")
        if given and given[0] in ("walk", "interpolate") and self.n != 1:
            raise ValueError(N_ONE)
        images = self.n * len(self.caption_list or [None])
        if images > MAX_IMAGES:
            raise ValueError(f"{images} images requested; the limit is {MAX_IMAGES} per job (captions × n)")
        return self

    @property
    def caption_list(self) -> list[str] | None:
        return [self.caption] if self.caption is not None else self.captions


class LikelihoodCreate(BaseModel):
    """Score images under a model with an encoder: −L_k (the importance-weighted bound, Burda et al. eq. 8) and the
    ELBO from the same k samples, in nats. Captioned models score each image under its caption."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"model": "iwae-mnist", "images": ["iVBORw0KGgo..."], "k": 1000}]})

    model: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    images: Annotated[list[ImageData], Field(min_length=1, max_length=MAX_INPUTS, description=IMAGES_DOC)]
    caption: Caption | None = None
    captions: list[Caption] | None = Field(None, description="one per image (or `caption` for all)")
    k: int = Field(100, ge=1, le=MAX_K, description="importance samples per image; L_k tightens as k grows")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="of the k samples; drawn when absent, returned")

    @model_validator(mode="after")
    def _check(self) -> LikelihoodCreate:
        if self.caption is not None and self.captions is not None:
            raise ValueError("send `caption` or `captions`, not both")
        if self.captions is not None and len(self.captions) != len(self.images):
            raise ValueError(f"{len(self.captions)} captions for {len(self.images)} images: send one per image")
        return self

    @property
    def caption_list(self) -> list[str] | None:
        return [self.caption] if self.caption is not None else self.captions


class SupportClass(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    label: Label = Field(description=f"1..{MAX_LABEL_CHARS} printable characters once whitespace at either end is "
                                     "dropped, distinct across classes")
    images: Annotated[list[ImageData], Field(min_length=1, max_length=MAX_SHOTS, description=IMAGES_DOC)]


class ClassificationCreate(BaseModel):
    """Few-shot classification (a model with `few_shot` in its modes: the Neural Statistician): each query image goes
    to the labelled support set whose context posterior is nearest, score = −KL(q(c | query) ‖ q(c | set)) in nats."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"model": "statistician-omniglot",
         "support": [{"label": "alpha", "images": ["iVBORw0KGgo..."]},
                     {"label": "beta", "images": ["iVBORw0KGgo...", "iVBORw0KGgo..."]}],
         "query": ["iVBORw0KGgo...", "iVBORw0KGgo..."]}]})

    model: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    support: Annotated[list[SupportClass], Field(
        min_length=MIN_CLASSES, max_length=MAX_CLASSES,
        description=f"{MIN_CLASSES}..{MAX_CLASSES} classes of 1..{MAX_SHOTS} images each")]
    query: Annotated[list[ImageData], Field(min_length=1, max_length=MAX_QUERY,
                                            description=f"the images to classify; {IMAGES_DOC}")]

    @model_validator(mode="after")
    def _check(self) -> ClassificationCreate:
        seen: dict[str, int] = {}
        for i, c in enumerate(self.support):
            if c.label in seen:
                raise ValueError(f"support[{i}].label {c.label!r} is also support[{seen[c.label]}]'s: labels must be "
                                 "distinct")
            seen[c.label] = i
        total = sum(len(c.images) for c in self.support) + len(self.query)
        if total > MAX_FEW_SHOT_IMAGES:
            raise ValueError(f"{total} images in all (support and query); the limit is {MAX_FEW_SHOT_IMAGES}")
        return self


class Links(BaseModel):
    self: str
    events: str
    cancel: str


class Progress(BaseModel):
    step: int = Field(description="DRAW steps drawn of the current chunk of rows")
    steps: int | None = Field(description="T")
    chunk: int | None = None
    chunks: int | None = None
    fraction: float = 0.0


class ImageOutput(BaseModel):
    index: int
    caption: str | None
    seed: int | None
    input: int | None = Field(None, description="index of the uploaded image it came from")
    image: str | None = Field(None, description="final PNG (present once drawn)")
    b64_json: str | None = Field(None, description="the final PNG itself, base64: only when read with "
                                                   "`response_format=b64_json` (as OpenAI's images API names it)")
    animation_gif: str | None = None
    animation_webp: str | None = None
    alignment: str | None = None
    attention: str | None = None
    frames_drawn: int = Field(0, description="frame PNGs stored so far")
    frames: list[str] = Field(default_factory=list, description="one link per stored frame, step order")
    nll: float | None = Field(None, description="likelihood jobs: −L_k in nats (lower is better)")
    elbo: float | None = Field(None, description="likelihood jobs: the ELBO estimate, nats (≤ −nll in expectation)")
    k: int | None = None
    label: str | None = Field(None, description="classification jobs: the predicted class (the best score)")
    scores: dict[str, float] | None = Field(
        None, description="classification jobs: label -> −KL(q(c | query) ‖ q(c | class)) in nats; higher is nearer")
    text: str | None = Field(None, description="text models: the sentence (words separated by spaces)")


class Generation(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "4be0c4d0e6a94b9c8a3f1b6f6c2d8e11", "status": "running", "model": "aligndraw-mnist-captions",
        "captions": ["the digit 3 is at the top left of the image"], "n": 1, "images": 1, "seeds": [91],
        "progress": {"step": 12, "steps": 32, "chunk": 1, "chunks": 1, "fraction": 0.375}, "queue_position": None,
        "created_at": "2025-01-01T12:00:00.000Z", "started_at": "2025-01-01T12:00:00.150Z", "finished_at": None,
        "expires_at": None, "error": None, "attempt": 1,
        "links": {"self": "/v1/generations/4be0…", "events": "/v1/generations/4be0…/events",
                  "cancel": "/v1/generations/4be0…"}, "outputs": []}]})

    id: str
    status: Status
    model: str | None = None
    condition: str | None = Field(None, description="none, caption, images, walk, likelihood, image_set, few_shot or "
                                                    "text_pair")
    captions: list[str] | None = None
    n: int | None = None
    images: int | None = None
    seeds: list[int] | None = None
    progress: Progress | None = None
    queue_position: int | None = Field(None, description="jobs ahead of this one (0: next); only while queued")
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    expires_at: str | None = Field(None, description="when results and the job record are deleted")
    error: str | None = None
    attempt: int | None = None
    links: Links
    outputs: list[ImageOutput] = Field(default_factory=list)


class ServedModel(ModelInfo):
    """A model some live worker serves (its heartbeat's ModelInfo), as GET /v1/models shows it."""

    default: bool = False
    links: dict[str, str] = Field(default_factory=dict)


class ModelList(BaseModel):
    models: list[ServedModel]


class Health(BaseModel):
    status: str
    detail: dict[str, Any] = Field(default_factory=dict)
