"""/v1/likelihoods: score uploaded images under a model with an encoder (a job like a generation: poll, stream,
cancel). Each output carries `nll` = −L_k and `elbo`, in nats (models/bounds.py on the worker)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse

from service.api.deps import CallerDep, ConnDep, IdempotencyKeyDep, MetricsDep, SettingsDep
from service.api.routes import generations as g
from service.schemas import Generation, LikelihoodCreate
from worker.protocol import Likelihood, OutputOptions, input_name

router = APIRouter(prefix="/v1/likelihoods", tags=["likelihoods"])


@router.post("", status_code=202, response_model=Generation, responses=g.ERRORS,
             summary="Score images: −L_k and the ELBO per image (a job)")
def create_likelihood(body: LikelihoodCreate, request: Request, response: Response, settings: SettingsDep,
                      conn: ConnDep, caller: CallerDep, metrics: MetricsDep,
                      idempotency_key: IdempotencyKeyDep) -> Generation:
    base = g._base(request)
    info = g.lookup_model(conn, settings, metrics, body.model, base)
    captions = body.caption_list
    if captions is not None and "caption" in info.modes:
        g._caption_problems(captions, info, base)
    uploads = g.decode_images(body.images, info)
    condition = Likelihood(inputs=[input_name(j) for j in range(len(uploads))], captions=captions, k=body.k)
    return g.submit(conn, settings, caller, metrics, response, base, body=body, model=body.model, info=info,
                    condition=condition, n=1, seeds=[body.seed] if body.seed is not None else None,
                    output=OutputOptions(), uploads=uploads, idempotency_key=idempotency_key)


@router.get("/{job_id}", response_model=Generation, responses=g.STATUS_RESPONSES,
            summary="Status, progress and the scores (ETag; `wait` long-polls)")
async def read_likelihood(job_id: g.JobId, request: Request, settings: SettingsDep, conn: ConnDep, caller: CallerDep,
                          metrics: MetricsDep, wait: g.Wait = 0.0,
                          if_none_match: Annotated[str | None, Header()] = None) -> Response:
    return await g.read_job(job_id, request, settings, conn, caller, metrics, wait, if_none_match)


@router.delete("/{job_id}", status_code=202, response_model=Generation, responses=g.ERRORS, summary="Cancel")
def cancel_likelihood(job_id: g.JobId, request: Request, settings: SettingsDep, conn: ConnDep,
                      caller: CallerDep) -> Generation:
    return g.cancel_generation(job_id, request, settings, conn, caller)


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={**g.ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "progress events, then "
                                         "one of `done`, `failed`, `canceled`, `expired`; resume with Last-Event-ID"}},
            summary="Server-Sent Events: progress, then the end (`done` carries the scores)")
async def likelihood_events(job_id: g.JobId, request: Request, settings: SettingsDep, conn: ConnDep,
                            caller: CallerDep, last_event_id: Annotated[str | None, Header()] = None
                            ) -> StreamingResponse:
    return await g.events(job_id, request, settings, conn, caller, last_event_id)
