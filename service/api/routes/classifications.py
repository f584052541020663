"""/v1/classifications: few-shot classification of uploaded query images into labelled support sets, under a model
with `few_shot` in its modes (a job like a generation: poll, stream, cancel). Each output carries the predicted
`label` and every class's score, −KL(q(c | query) ‖ q(c | class)) in nats (the family's `class_scores`, run by the
worker)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from service.api.deps import CallerDep, ConnDep, IdempotencyKeyDep, MetricsDep, SettingsDep
from service.api.routes import generations as g
from service.problems import Problem, validation_detail
from service.schemas import ClassificationCreate, Generation
from worker.protocol import FewShot, FewShotClass, OutputOptions, input_name
from worker.queue import model_catalog

router = APIRouter(prefix="/v1/classifications", tags=["classifications"])


@router.post("", status_code=202, response_model=Generation, responses=g.ERRORS,
             summary="Classify images few-shot: a label and a score per class for each query image (a job)")
def create_classification(body: ClassificationCreate, request: Request, response: Response, settings: SettingsDep,
                          conn: ConnDep, caller: CallerDep, metrics: MetricsDep,
                          idempotency_key: IdempotencyKeyDep) -> Generation:
    base = g._base(request)
    info = g.lookup_model(conn, settings, metrics, body.model, base)
    if "few_shot" not in info.modes:
        metrics.jobs_rejected.labels("invalid").inc()
        able = sorted(k for k, m in model_catalog(conn, settings).items() if "few_shot" in m.modes)
        raise Problem(422, "invalid-request", f"model {body.model!r} ({info.kind}) cannot classify: its modes are "
                      f"{sorted(info.modes)}, without 'few_shot'; models that classify: {able}",
                      title="Invalid request", models=f"{base}/v1/models")
    uploads: list[bytes] = []
    classes: list[FewShotClass] = []
    for i, c in enumerate(body.support):
        shots = g.decode_images(c.images, info, field=f"support[{i}].images")
        classes.append(FewShotClass(label=c.label, inputs=[input_name(len(uploads) + j) for j in range(len(shots))]))
        uploads += shots
    query = g.decode_images(body.query, info, field="query")
    try:
        condition = FewShot(classes=classes, query=[input_name(len(uploads) + j) for j in range(len(query))])
    except ValidationError as e:  # the schema checked the same limits: a backstop, never a 500
        raise Problem(422, "invalid-request", validation_detail(e), title="Invalid request") from None
    return g.submit(conn, settings, caller, metrics, response, base, body=body, model=body.model, info=info,
                    condition=condition, n=1, seeds=None, output=OutputOptions(), uploads=uploads + query,
                    idempotency_key=idempotency_key)


g.add_job_routes(router, "classification", "the labels and scores")
