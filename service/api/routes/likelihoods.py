"""/v1/likelihoods: score uploaded images under a model with an encoder (a job like a generation: poll, stream,
cancel). Each output carries `nll` = −L_k and `elbo`, in nats (models/bounds.py on the worker)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

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
    g._takes("likelihood", info, metrics)  # before the images are judged against a model that scores none
    captions = body.caption_list
    if captions is not None and "caption" in info.modes:
        g._caption_problems(captions, info, base)
    uploads = g.decode_images(body.images, info)
    condition = Likelihood(inputs=[input_name(j) for j in range(len(uploads))], captions=captions, k=body.k)
    return g.submit(conn, settings, caller, metrics, response, base, body=body, model=body.model, info=info,
                    condition=condition, n=1, seeds=[body.seed] if body.seed is not None else None,
                    output=OutputOptions(), uploads=uploads, idempotency_key=idempotency_key)


g.add_job_routes(router, "likelihood", "the scores")
