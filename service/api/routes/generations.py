"""/v1/generations: create, read, stream, cancel, and the output files."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

import anyio
import redis
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from models.vocab import CaptionTooLongError, EmptyCaptionError, UnknownWordsError
from service import outputs, store
from service.api.deps import CallerDep, ConnDep, IdempotencyKeyDep, MetricsDep, SettingsDep
from service.config import ApiSettings
from service.events import JobEvents
from service.problems import PROBLEM_JSON, Problem, validation_detail
from service.schemas import N_ONE, Generation, GenerationCreate
from worker import inputs
from worker.protocol import (
    JOB_ID,
    MAX_SET_IMAGES,
    TERMINAL,
    Captions,
    Condition,
    Decoding,
    Images,
    ImageSet,
    InvalidJobError,
    JobRequest,
    Keys,
    ModelInfo,
    NoCondition,
    TextPair,
    Walk,
    animation_name,
    attention_name,
    content_type,
    frame_name,
    image_name,
    input_name,
    job_bytes_bound,
    mode_problem,
    validate_for_model,
)
from worker.queue import JobView, cancel, enqueue_view, get_file, get_view, job_timeout, model_catalog

log = logging.getLogger("service")
router = APIRouter(prefix="/v1/generations", tags=["generations"])

# no length limit here: an id no job can have (longer than 64, or other characters) is a 404 like any unknown one
JobId = Annotated[str, Path(description="job id from POST /v1/generations")]
Index = Annotated[int, Path(ge=0, description="image index (caption-major: caption i // n)")]
PROBLEM = {"content": {PROBLEM_JSON: {}}, "description": "problem details (RFC 9457)"}
ERRORS: dict[int | str, dict[str, Any]] = {s: PROBLEM for s in (400, 401, 404, 409, 413, 422, 429, 503)}


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _caption_problems(captions: list[str], info: ModelInfo, base: str, names: list[str] | None = None) -> None:
    """A 422 for the first empty or too long caption, else one naming every unknown word; `names` says what each
    caption is called in the messages ("caption j" by default; an interpolation's "from" and "to")."""
    vocab = info.caption_vocab
    called = names or [f"caption {j}" for j in range(len(captions))]
    unknown: list[dict[str, Any]] = []
    for j, caption in enumerate(captions):
        try:
            vocab.check(caption)
        except UnknownWordsError as e:
            unknown += [{"caption": j, "word": u.word, "position": u.position, "start": u.start, "end": u.end}
                        for u in e.unknown]
        except EmptyCaptionError:
            raise Problem(422, "empty-caption", f"{called[j]} has no words", title="Empty caption",
                          caption=j) from None
        except CaptionTooLongError as e:
            raise Problem(422, "caption-too-long", f"{called[j]} has {e.length} tokens; model {info.id!r} takes at "
                          f"most {e.max_length}", title="Caption too long", caption=j, tokens=e.length,
                          max_tokens=e.max_length) from None
    if unknown:
        where = ", ".join(f"{u['word']!r} ({called[u['caption']]}, position {u['position']})" for u in unknown)
        raise Problem(422, "unknown-words", f"words the model does not know: {where}", title="Unknown words",
                      unknown_words=unknown, vocabulary=f"{base}/v1/models/{info.id}")


def _takes(kind: str, info: ModelInfo, metrics) -> None:
    """A 422 unless the model takes this condition: asked before uploads are decoded and judged against it."""
    problem = mode_problem(kind, info)
    if problem is not None:
        metrics.jobs_rejected.labels("invalid").inc()
        raise Problem(422, "invalid-request", problem, title="Invalid request")


def decode_images(images: list[str], info: ModelInfo, field: str = "images") -> list[bytes]:
    """Check uploaded base64 PNGs against the model (worker.inputs) -> the normalised PNGs to store; a bad one is a
    422 naming it and why."""
    try:
        height, width, channels = info.shape
    except InvalidJobError as e:
        raise Problem(422, "invalid-request", f"{field}: {e}", title="Invalid request") from None
    out = []
    for j, text in enumerate(images):
        try:
            pixels = inputs.decode(inputs.from_base64(text), height=height, width=width, channels=channels)
        except inputs.InputImageError as e:
            raise Problem(422, "bad-image", f"{field}[{j}]: {e}", title="Bad image", image=j, field=field,
                          expected={"format": "png", "height": info.height, "width": info.width,
                                    "channels": info.channels}) from None
        out.append(inputs.normalised_png(pixels))
    return out


def lookup_model(conn, settings, metrics, model: str, base: str) -> ModelInfo:
    catalog = model_catalog(conn, settings)
    if not catalog:
        storage_room(conn, settings, metrics, 0)  # a full Redis also silences the workers' heartbeats: say so
        metrics.jobs_rejected.labels("no-worker").inc()
        raise Problem(503, "no-worker", "no worker is running; nothing could draw this job", title="No worker",
                      headers={"Retry-After": str(settings.queue_full_retry_after)})
    if model not in catalog:
        metrics.jobs_rejected.labels("unknown-model").inc()
        raise Problem(422, "unknown-model", f"unknown model {model!r}; served: {sorted(catalog)}",
                      title="Unknown model", models=f"{base}/v1/models")
    return catalog[model]


def storage_room(conn, settings, metrics, need: int) -> int:
    """503 storage-full unless the job store has room for `need` more bytes under its fill limit; else the jobs
    waiting (read in the same round trip)."""
    fits, used, limit, waiting = store.room(conn, settings, need)
    if not fits:
        metrics.jobs_rejected.labels("storage-full").inc()
        raise Problem(503, "storage-full", f"the job store is full: {used} bytes used, this job may add {need}, the "
                      f"limit for new jobs is {limit}; results expire {settings.result_ttl} s after their job ends",
                      title="Storage full", headers={"Retry-After": str(settings.storage_full_retry_after)},
                      used_bytes=used, job_bytes_bound=need, limit_bytes=limit)
    return waiting


def submit(conn, settings, caller, metrics, response: Response, base: str, *, body: Any, model: str,
           info: ModelInfo, condition: Condition, n: int, seeds: list[int] | None, output: Any,
           uploads: list[bytes], idempotency_key: str | None, decoding: Decoding | None = None) -> Generation:
    """Check, store the uploaded images beside the job, enqueue: what every POST that creates a job shares."""
    try:
        job = JobRequest(model=model, condition=condition, n=n, seeds=seeds, output=output, decoding=decoding)
        validate_for_model(job, info, max_job_bytes=settings.max_job_bytes)
    except (ValidationError, InvalidJobError) as e:
        metrics.jobs_rejected.labels("invalid").inc()
        detail = validation_detail(e) if isinstance(e, ValidationError) else str(e)
        raise Problem(422, "invalid-request", detail, title="Invalid request") from None

    depth = storage_room(conn, settings, metrics, job_bytes_bound(job, info) + sum(len(u) for u in uploads))
    if depth >= settings.max_queue_depth:
        metrics.jobs_rejected.labels("queue-full").inc()
        raise Problem(503, "queue-full", f"{depth} jobs are waiting; the limit is {settings.max_queue_depth}",
                      title="Queue full", headers={"Retry-After": str(settings.queue_full_retry_after)})

    from worker.queue import new_job_id

    job_id = new_job_id()
    ttl = store.record_ttl(settings, job_timeout(job, settings, info.steps))
    collection = store.route(condition.kind)
    if idempotency_key is not None:
        digest = store.body_hash({**body.model_dump(mode="json"), "model": model})
        earlier = store.claim_idempotency(conn, settings, caller.owner, idempotency_key, digest, job_id, ttl)
        if earlier is not None:
            if earlier.get("hash") != digest:
                raise Problem(409, "idempotency-conflict", "this Idempotency-Key was used with another body",
                              title="Idempotency key reused")
            response.headers["Idempotent-Replayed"] = "true"
            response.headers["Location"] = f"{base}/v1/{collection}/{earlier['job']}"  # as the first answer had
            return _read(conn, settings, earlier["job"], base)
    files = Keys(settings.key_prefix).files(job_id)
    try:
        store.save_record(conn, settings, job_id, caller.owner, ttl, collection)
        if uploads:  # before the job exists, so a worker never sees a job without its inputs
            with conn.pipeline() as p:
                p.hset(files, mapping={input_name(j): data for j, data in enumerate(uploads)})
                p.expire(files, ttl)
                p.execute()
        view, _ = enqueue_view(conn, job, settings, job_id=job_id, steps=info.steps)
    except Exception:
        if idempotency_key is not None:
            store.release_idempotency(conn, settings, caller.owner, idempotency_key)
        conn.delete(files)
        raise
    metrics.jobs_created.labels(model).inc()
    response.headers["Location"] = f"{base}/v1/{collection}/{job_id}"
    return store.build(conn, settings, view, base)  # the job as just queued: no read back


@router.post("", status_code=202, response_model=Generation, responses=ERRORS,
             summary="Draw images: for captions, unconditional samples, reconstructions, samples of a set's "
                     "concept, a latent walk, or a text model's sentences (a job)")
def create_generation(body: GenerationCreate, request: Request, response: Response, settings: SettingsDep,
                      conn: ConnDep, caller: CallerDep, metrics: MetricsDep,
                      idempotency_key: IdempotencyKeyDep) -> Generation:
    base = _base(request)
    model = body.model or settings.default_model
    info = lookup_model(conn, settings, metrics, model, base)
    captions = body.caption_list
    uploads: list[bytes] = []
    condition: Condition = NoCondition()
    if captions is not None:
        condition = Captions(captions=captions)
    elif body.images is not None:
        # Examples of one concept for a model that samples sets (n new samples), else images to reconstruct (one each)
        as_set = "image_set" in info.modes
        if as_set and len(body.images) > MAX_SET_IMAGES:
            raise Problem(422, "invalid-request", f"{len(body.images)} images: a set is 1..{MAX_SET_IMAGES} examples",
                          title="Invalid request")
        _takes("image_set" if as_set else "images", info, metrics)
        if not as_set and body.n != 1:
            raise Problem(422, "invalid-request", N_ONE, title="Invalid request")
        uploads = decode_images(body.images, info)
        names = [input_name(j) for j in range(len(uploads))]
        condition = ImageSet(inputs=names) if as_set else Images(inputs=names)
    elif body.walk is not None:
        if body.walk.images is not None:
            _takes("walk", info, metrics)
            uploads = decode_images(body.walk.images, info, field="walk.images")
        condition = Walk(inputs=[input_name(j) for j in range(len(uploads))], points=body.walk.points)
    elif body.interpolate is not None:
        condition = TextPair(texts=[body.interpolate.from_, body.interpolate.to], points=body.interpolate.points)
        if "text_pair" in info.modes:  # else validate_for_model says which conditions the model takes
            try:
                _caption_problems(condition.texts, info, base, names=["interpolate.from", "interpolate.to"])
            except Problem:
                metrics.jobs_rejected.labels("caption").inc()
                raise
    if "caption" in info.modes:
        if captions is None:
            raise Problem(422, "caption-required", f"model {model!r} draws captions: send `caption` or `captions`",
                          title="Caption required")
        try:
            _caption_problems(captions, info, base)
        except Problem:
            metrics.jobs_rejected.labels("caption").inc()
            raise
    try:
        need = JobRequest(model=model, condition=condition, n=body.n).seed_count
    except ValidationError as e:
        raise Problem(422, "invalid-request", validation_detail(e), title="Invalid request") from None
    seeds: list[int] | None = None
    if isinstance(condition, Walk) and body.walk is not None and body.walk.seeds is not None:
        seeds = list(body.walk.seeds)
    elif body.seed is not None and not isinstance(condition, Walk):
        seeds = [body.seed + i for i in range(need)]  # none where the job draws no noise (an interpolation)
    elif body.seeds is not None:
        if need == 0:  # reconstructions (walks and interpolations refuse `seeds` in the schema)
            metrics.jobs_rejected.labels("invalid").inc()
            raise Problem(422, "invalid-request", "reconstructions are deterministic (through the posterior means): "
                          "they take no `seeds`", title="Invalid request")
        if len(body.seeds) != need:
            raise Problem(422, "invalid-request", f"{len(body.seeds)} seeds for {need} outputs: send one per output "
                          "(caption-major), or `seed`", title="Invalid request")
        seeds = list(body.seeds)
    return submit(conn, settings, caller, metrics, response, base, body=body, model=model, info=info,
                  condition=condition, n=body.n, seeds=seeds, output=body.output, uploads=uploads,
                  idempotency_key=idempotency_key, decoding=body.decoding)


def _read(conn, settings, job_id: str, base: str, metrics=None, collection: str = "generations") -> Generation:
    """The job's body; an expired one's names `collection`, where it is read (the caller checks was_under)."""
    view = get_view(conn, job_id, settings)
    if view is None:
        return store.expired(base, job_id, collection)
    gen = store.build(conn, settings, view, base)
    if metrics is not None and gen.status in TERMINAL and store.first_sight_of_end(conn, settings, job_id):
        metrics.jobs_finished.labels(gen.status).inc()
        if gen.status == "failed":
            metrics.job_failures.inc()
        if gen.created_at and gen.finished_at:
            from datetime import datetime

            took = datetime.fromisoformat(gen.finished_at) - datetime.fromisoformat(gen.created_at)
            metrics.job_latency.labels(gen.status).observe(max(took.total_seconds(), 0.0))
    return gen


def _authorize(conn, settings, caller, job_id: str) -> str | None:
    """404 unless the id is well formed and, with API keys on, the job exists (or existed) and belongs to the caller;
    returns the owner record then. With API keys off every caller may read every job: nothing is read (None)."""
    if not JOB_ID.match(job_id):
        raise _unknown(job_id)
    if not settings.api_keys:
        return None
    owner = store.load_owner(conn, settings, job_id)
    if owner != caller.owner:
        raise _unknown(job_id)
    return owner


def _here(conn, settings, job_id: str, view: JobView | None, collection: str) -> bool:
    """Whether the job is (or, expired, was) one of /v1/{collection}'s; else its URLs there are a 404."""
    if view is None:
        return store.was_under(conn, settings, job_id, collection)
    return store.in_collection(view, collection)


def _unknown(job_id: str) -> Problem:
    shown = job_id if len(job_id) <= 64 else job_id[:64] + "…"  # the URL may be long: echo no more than an id
    return Problem(404, "unknown-job", f"no job {shown!r} here (never created, gone after its TTL, or another "
                   "collection's)", title="Unknown job")


ResponseFormat = Annotated[Literal["url", "b64_json"], Query(
    description="`url` (default): each final image as a link; `b64_json`: also the PNG itself, base64, in the "
                "output's `b64_json` (one request fewer a job for small results; at most `GLIMPSE_MAX_INLINE_BYTES` "
                "of PNGs, 16 MiB by default)")]
Wait = Annotated[float, Query(ge=0, description="long poll: hold the request up to this many seconds (at most "
                                                 "`max_wait`, 30) until the job changes from the `If-None-Match` "
                                                 "ETag, or without one until it ends")]
ETAG = {"ETag": {"description": "changes whenever the body does", "schema": {"type": "string"}}}
STATUS_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS, 200: {"headers": ETAG}, 304: {"description": "Not modified: the job is as the If-None-Match ETag says",
                                            "headers": ETAG}}


def _inline(conn, settings, gen: Generation) -> Generation:
    """Each drawn output's final PNG into its `b64_json` (`response_format=b64_json`); 422 past max_inline_bytes."""
    found = store.final_pngs(conn, settings, gen)
    total = sum(len(png) for _, png in found)
    if total > settings.max_inline_bytes:
        raise Problem(422, "inline-too-large", f"the job's images hold {total} PNG bytes; a read inlines at most "
                      f"{settings.max_inline_bytes} (max_inline_bytes): fetch them by their URLs",
                      title="Too large to inline", limit_bytes=settings.max_inline_bytes)
    for out, png in found:
        out.b64_json = base64.b64encode(png).decode("ascii")
    return gen


def _body(gen: Generation) -> tuple[bytes, str]:
    """The body's JSON and its ETag, made once (in a worker thread: a body can be large)."""
    body = gen.model_dump_json().encode()
    return body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def matches(if_none_match: str | None, tag: str) -> bool:
    """RFC 9110 §13.1.2: `*`, or any listed tag, weak or strong, equal to ours."""
    if if_none_match is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or tag in tags


async def read_job(job_id: str, request: Request, settings, conn, caller, metrics, wait: float,
                   if_none_match: str | None, response_format: str = "url", collection: str = "generations"
                   ) -> Response:
    """The job's body with its ETag; 304 when it still matches `If-None-Match`. With `wait`, hold the request until
    the body changes (or, without `If-None-Match`, until the job ends), waking on the worker's announcements.

    Every read is of the links' body; with `b64_json` the PNGs are inlined once, into the body sent. A linked PNG
    never changes, so the links' body fixes the inline one, whose ETag is the links' with "-b64" added."""
    base = _base(request)
    deadline = time.monotonic() + min(wait, settings.max_wait)
    b64 = response_format == "b64_json"

    def read() -> tuple[Generation, bytes, str, bytes | None]:
        """The links' body and ETag; with `b64_json`, when this read decides the answer (no 304, no more waiting),
        the inline body too, in the same trip to the thread pool."""
        gen = _read(conn, settings, job_id, base, metrics, collection)
        body, tag = _body(gen)
        tag = tag[:-1] + '-b64"' if b64 else tag
        final = b64 and not (matches(if_none_match, tag) or waiting_for_end(gen))
        return gen, body, tag, _body(_inline(conn, settings, gen))[0] if final else None

    def waiting_for_end(gen: Generation) -> bool:
        return if_none_match is None and gen.status not in TERMINAL and gen.status != "expired"

    def first_read() -> tuple[Generation, bytes, str, bytes | None]:  # one trip to the thread pool
        """The first read, or a 404 for an id never used here. The API's record outlives the job: it tells an
        expired job of this collection from an id never used, or another collection's."""
        _authorize(conn, settings, caller, job_id)  # with API keys: 404 unless the caller's (its owner record)
        first = read()
        here = (store.was_under(conn, settings, job_id, collection) if first[0].status == "expired"
                else store.lives_under(first[0].condition, collection))
        if not here:
            raise _unknown(job_id)  # another collection's job: its links name where it lives
        return first

    read_at = time.monotonic()
    with request.app.state.events.watch(job_id) as watch:  # from before the first read: no announcement is missed
        gen, body, tag, inline = await anyio.to_thread.run_sync(first_read)
        while True:
            unchanged = matches(if_none_match, tag)
            left = deadline - time.monotonic()
            if left <= 0 or not (unchanged or waiting_for_end(gen)):
                break
            await watch.wait(min(left, settings.events_poll_interval),
                             not_before=min(read_at + settings.events_min_interval, deadline))
            read_at = time.monotonic()
            gen, body, tag, inline = await anyio.to_thread.run_sync(read)
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if unchanged:
        return Response(status_code=304, headers=headers)
    if b64:  # inlined by the read that decided the answer, or now that the wait ran out
        body = inline if inline is not None else await anyio.to_thread.run_sync(
            lambda: _body(_inline(conn, settings, gen))[0])
    return Response(body, media_type="application/json", headers=headers)


@router.get("/{job_id}", response_model=Generation, responses=STATUS_RESPONSES,
            summary="Status, progress and output links (ETag; `wait` long-polls)")
async def read_generation(job_id: JobId, request: Request, settings: SettingsDep, conn: ConnDep, caller: CallerDep,
                          metrics: MetricsDep, wait: Wait = 0.0, response_format: ResponseFormat = "url",
                          if_none_match: Annotated[str | None, Header()] = None) -> Response:
    return await read_job(job_id, request, settings, conn, caller, metrics, wait, if_none_match, response_format)


@router.delete("/{job_id}", status_code=202, response_model=Generation, responses=ERRORS, summary="Cancel")
def cancel_generation(job_id: JobId, request: Request, settings: SettingsDep, conn: ConnDep,
                      caller: CallerDep) -> Generation:
    return cancel_job(job_id, request, settings, conn, caller, "generations")


def cancel_job(job_id: str, request: Request, settings, conn, caller, collection: str) -> Generation:
    _authorize(conn, settings, caller, job_id)
    view = get_view(conn, job_id, settings)
    if not _here(conn, settings, job_id, view, collection):
        raise _unknown(job_id)
    if view is None:
        raise Problem(409, "already-ended", f"job {job_id} has expired", title="Already ended", status_now="expired")
    if view.status in TERMINAL:
        raise Problem(409, "already-ended", f"job {job_id} has already {view.status}", title="Already ended",
                      status_now=view.status)
    cancel(conn, job_id, settings)
    return _read(conn, settings, job_id, _base(request))


# --- output files -----------------------------------------------------------------------------------------------

def _file(conn, settings, caller, job_id: str, name: str, render: Callable[[], bytes | None] | None = None, *,
          path: str) -> Response:
    """A stored file; with `render`, the file kept, or one rendered from what the worker stored raw on first
    request (service.outputs), then kept. `path`: the file as its URL names it below the job, for a 404."""
    _authorize(conn, settings, caller, job_id)
    data = get_file(conn, job_id, name, settings) if render is None else render()
    if data is None:
        view = get_view(conn, job_id, settings)  # only to say why not
        if view is None and store.load_owner(conn, settings, job_id) is None:
            raise _unknown(job_id)  # never created (files of every collection's jobs live here)
        status = view.status if view is not None else "expired"
        ended = status in TERMINAL or status == "expired"
        when = f"; the job has {status}" if ended else f" yet; the job is {status}"
        raise Problem(404, "no-such-output", f"{path} of job {job_id} does not exist{when}", title="No such output",
                      status_now=status)
    return Response(data, media_type=content_type(name), headers=_immutable(settings))


def _immutable(settings: ApiSettings) -> dict[str, str]:
    # A stored file never changes (a requeued job redraws the same pixels from the same seeds).
    return {"Cache-Control": f"private, max-age={settings.result_ttl}, immutable"}


IMAGE: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}, "description": "PNG"}, 404: PROBLEM}


@router.get("/{job_id}/images/{index}.png", responses=IMAGE, response_class=Response, summary="Final image")
def image(job_id: JobId, index: Index, settings: SettingsDep, conn: ConnDep, caller: CallerDep) -> Response:
    return _file(conn, settings, caller, job_id, image_name(index), path=f"images/{index}.png")


@router.get("/{job_id}/images/{index}/frames/{step}.png", responses=IMAGE, response_class=Response,
            summary="Canvas after step t (1..T); readable while the job runs")
def frame(job_id: JobId, index: Index, step: Annotated[int, Path(ge=1)], settings: SettingsDep, conn: ConnDep,
          caller: CallerDep) -> Response:
    return _file(conn, settings, caller, job_id, frame_name(index, step),
                 lambda: outputs.frame(conn, settings, job_id, index, step), path=f"images/{index}/frames/{step}.png")


@router.get("/{job_id}/images/{index}/animation.{fmt}", response_class=Response, summary="Animation of all T steps",
            responses={200: {"content": {"image/gif": {}, "image/webp": {}}}, 404: PROBLEM})
def animation(job_id: JobId, index: Index, fmt: Literal["gif", "webp"], settings: SettingsDep, conn: ConnDep,
              caller: CallerDep) -> Response:
    return _file(conn, settings, caller, job_id, animation_name(index, fmt),
                 lambda: outputs.animation(conn, settings, job_id, index, fmt), path=f"images/{index}/animation.{fmt}")


@router.get("/{job_id}/images/{index}/attention.json", response_class=Response,
            responses={200: {"content": {"application/json": {}}}, 404: PROBLEM},
            summary="Write windows (T × [x0, y0, x1, y1] px) and the alignment")
def attention(job_id: JobId, index: Index, settings: SettingsDep, conn: ConnDep, caller: CallerDep) -> Response:
    return _attention(conn, settings, caller, job_id, index, f"images/{index}/attention.json")


def _attention(conn, settings, caller, job_id: str, index: int, path: str) -> Response:
    return _file(conn, settings, caller, job_id, attention_name(index),
                 lambda: outputs.attention(conn, settings, job_id, index), path=path)


@router.get("/{job_id}/images/{index}/alignment.json", response_class=JSONResponse,
            responses={200: {"content": {"application/json": {}}}, 404: PROBLEM},
            summary="Alignment over caption words: T rows × words, with the words")
def alignment(job_id: JobId, index: Index, settings: SettingsDep, conn: ConnDep, caller: CallerDep) -> JSONResponse:
    att = json.loads(bytes(_attention(conn, settings, caller, job_id, index,
                                      f"images/{index}/alignment.json").body))  # a 404 names the URL asked
    if att.get("alignment") is None:
        raise Problem(404, "no-alignment", "this image was drawn without a caption: it has no alignment",
                      title="No alignment")
    return JSONResponse({"words": att.get("words", []), "steps": att.get("steps"), "alignment": att["alignment"]},
                        headers=_immutable(settings))  # derived from a stored file: as unchanging as it


# --- events -----------------------------------------------------------------------------------------------------

def _sse(event: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get("/{job_id}/events", response_class=StreamingResponse, summary="Server-Sent Events: steps, then the end",
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`step` events (id = global step across chunks of rows) with the frame "
                                            "links, then one of `done`, `failed`, `canceled`, `expired`. Resume with "
                                            "`Last-Event-ID`."}, 404: PROBLEM})
async def events(job_id: JobId, request: Request, settings: SettingsDep, conn: ConnDep, caller: CallerDep,
                 last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    return await job_events(job_id, request, settings, conn, caller, last_event_id, "generations")


async def job_events(job_id: str, request: Request, settings, conn, caller, last_event_id: str | None,
                     collection: str) -> StreamingResponse:
    await anyio.to_thread.run_sync(_authorize, conn, settings, caller, job_id)
    view = await anyio.to_thread.run_sync(get_view, conn, job_id, settings)
    if not await anyio.to_thread.run_sync(_here, conn, settings, job_id, view, collection):
        raise _unknown(job_id)
    base = _base(request)  # an expired job's stream sends `expired` and ends
    start = event_cursor(last_event_id)
    return StreamingResponse(_stream(conn, settings, job_id, base, start, request.app.state.events),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def event_cursor(last_event_id: str | None) -> int:
    """The step a resumed stream goes on after: a Last-Event-ID we could have sent (1–9 decimal digits), else 0.

    Negative, huge or non-numeric ids restart the stream from the first step; `_stream` also caps the cursor at the
    job's last step, so no header can make the stream emit more events than the job has steps."""
    value = (last_event_id or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else 0


def _step_events(view: JobView, sent: int, me: str) -> tuple[str, int]:
    """The `step` events the job's view holds past cursor `sent`, as one write ("" when none), and the new cursor.
    At most chunks × T events: bounded by the job, not by the client's Last-Event-ID."""
    returns_frames = view.meta.get("returns", "frames") == "frames"
    steps = (view.steps or 0) if returns_frames else 0  # step events only where the steps are frames
    chunk = int(view.meta.get("chunk") or 1)
    chunks = int(view.meta.get("chunks") or chunk)
    tick = (chunk - 1) * steps + view.step if view.status != "queued" else 0
    if view.status == "succeeded":
        tick = chunks * steps
    if steps and "chunks" in view.meta:  # a cursor past the job's last step has nothing more to send
        sent = min(sent, chunks * steps)
    if not (tick > sent and steps):
        return "", sent
    counts = view.meta.get("frames") or []  # frame PNGs each image offers so far (the worker's count)
    batch = []
    while sent < tick:
        sent += 1
        t = (sent - 1) % steps + 1
        images = [i for i, n in enumerate(counts) if n >= t]
        data: dict[str, Any] = {"step": t, "steps": steps, "chunk": (sent - 1) // steps + 1,
                                "frames": [f"{me}/images/{i}/frames/{t}.png" for i in images]}
        if sent == tick and view.meta.get("live"):  # the latest step: its write window and word weights
            data["live"] = view.meta["live"]
        batch.append(_sse("step", data, sent))
    return "".join(batch), sent


async def _stream(conn, settings, job_id: str, base: str, sent: int, events: JobEvents) -> AsyncIterator[str]:
    me = f"{base}/v1/generations/{job_id}"  # the files live under generations for every kind of job
    yield "retry: 1000\n\n"
    with events.watch(job_id) as watch:  # from before the first read: no announcement is missed
        quiet_since = time.monotonic()
        backoff = settings.events_poll_interval
        while True:
            read_at = time.monotonic()
            throttle_from = 0.0  # a read that sends steps holds the next one back; one that found nothing does not
            try:
                view = await anyio.to_thread.run_sync(get_view, conn, job_id, settings)
                if view is None:
                    yield _sse("expired", {"id": job_id, "status": "expired"})
                    return
                found, sent = _step_events(view, sent, me)
                if found:
                    yield found
                    quiet_since = time.monotonic()
                    throttle_from = read_at
                if view.status in TERMINAL:
                    gen = await anyio.to_thread.run_sync(_read, conn, settings, job_id, base)
                    yield _sse({"succeeded": "done"}.get(view.status, view.status), gen.model_dump(mode="json"))
                    return
                backoff = settings.events_poll_interval
            except redis.RedisError as e:
                # The job store blinked: keep the stream (and the client's cursor) and look again, backing off to 2 s.
                log.warning("events %s: job store unavailable: %s", job_id, type(e).__name__)
                yield ": job store unavailable; retrying\n\n"
                backoff = min(max(backoff, 0.1) * 2, 2.0)
            if time.monotonic() - quiet_since > settings.events_keepalive:
                yield ": keepalive\n\n"
                quiet_since = time.monotonic()
            if backoff > settings.events_poll_interval:
                await asyncio.sleep(backoff)  # Redis is away: no announcement will come
            else:  # the worker's next step or end, or the fallback poll; steps read at most every events_min_interval
                # (a job's first step is read as soon as it is announced: the read before found it queued)
                await watch.wait(backoff, not_before=throttle_from + settings.events_min_interval)


# --- the other job collections ----------------------------------------------------------------------------------

def add_job_routes(collection: APIRouter, noun: str, carries: str) -> None:
    """GET (status, ETag, `wait`), DELETE (cancel) and /events on `collection`, whose POST is its own: the jobs of
    /v1/likelihoods and /v1/classifications are generation jobs under another name (`noun`), whose outputs carry
    `carries` (the scores, the labels)."""

    where = f"{noun}s"  # the collection's path under /v1: a job of another is a 404 here

    async def read(job_id: JobId, request: Request, settings: SettingsDep, conn: ConnDep, caller: CallerDep,
                   metrics: MetricsDep, wait: Wait = 0.0, response_format: ResponseFormat = "url",
                   if_none_match: Annotated[str | None, Header()] = None) -> Response:
        return await read_job(job_id, request, settings, conn, caller, metrics, wait, if_none_match, response_format,
                              where)

    def cancel_here(job_id: JobId, request: Request, settings: SettingsDep, conn: ConnDep,
                    caller: CallerDep) -> Generation:
        return cancel_job(job_id, request, settings, conn, caller, where)

    async def stream(job_id: JobId, request: Request, settings: SettingsDep, conn: ConnDep, caller: CallerDep,
                     last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
        return await job_events(job_id, request, settings, conn, caller, last_event_id, where)

    collection.add_api_route("/{job_id}", read, methods=["GET"], response_model=Generation, name=f"read_{noun}",
                             responses=STATUS_RESPONSES,
                             summary=f"Status, progress and {carries} (ETag; `wait` long-polls)")
    collection.add_api_route("/{job_id}", cancel_here, methods=["DELETE"], status_code=202,
                             response_model=Generation,
                             name=f"cancel_{noun}", responses=ERRORS, summary="Cancel")
    collection.add_api_route(
        "/{job_id}/events", stream, methods=["GET"], response_class=StreamingResponse, name=f"{noun}_events",
        responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "progress events, then one of "
                                   "`done`, `failed`, `canceled`, `expired`; resume with Last-Event-ID"}},
        summary=f"Server-Sent Events: progress, then the end (`done` carries {carries})")
