"""/v1/models: what the live workers serve (each worker's heartbeat carries its models' ModelInfo)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.deps import CallerDep, ConnDep, SettingsDep
from service.config import ApiSettings
from service.problems import PROBLEM_JSON, Problem
from service.schemas import ModelList, ServedModel
from worker.protocol import ModelInfo
from worker.queue import model_catalog

router = APIRouter(prefix="/v1/models", tags=["models"])


def _out(info: ModelInfo, settings: ApiSettings, base: str) -> ServedModel:
    return ServedModel(**info.model_dump(), default=info.id == settings.default_model,
                       links={"self": f"{base}/v1/models/{info.id}"})


@router.get("", response_model=ModelList, summary="Models served by live workers")
def list_models(request: Request, settings: SettingsDep, conn: ConnDep, caller: CallerDep) -> ModelList:
    base = str(request.base_url).rstrip("/")
    catalog = model_catalog(conn, settings)
    return ModelList(models=[_out(catalog[k], settings, base) for k in sorted(catalog)])


@router.get("/{model_id}", response_model=ServedModel, responses={404: {"content": {PROBLEM_JSON: {}}}},
            summary="One model, with its modes and vocabulary")
def read_model(model_id: str, request: Request, settings: SettingsDep, conn: ConnDep,
               caller: CallerDep) -> ServedModel:
    catalog = model_catalog(conn, settings)
    if model_id not in catalog:
        raise Problem(404, "unknown-model", f"no live worker serves {model_id!r}; served: {sorted(catalog)}",
                      title="Unknown model")
    return _out(catalog[model_id], settings, str(request.base_url).rstrip("/"))
