"""/v1/models: what the live workers serve."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service import store
from service.api.deps import CallerDep, ConnDep, SettingsDep
from service.config import ApiSettings
from service.problems import PROBLEM_JSON, Problem
from service.schemas import ModelList, ModelOut

router = APIRouter(prefix="/v1/models", tags=["models"])


def _out(raw: dict[str, Any], settings: ApiSettings, base: str) -> ModelOut:
    return ModelOut(
        id=raw["id"], kind=raw["kind"], height=raw["height"], width=raw["width"], channels=raw["channels"],
        steps=raw["steps"], default=raw["id"] == settings.default_model,
        max_caption_tokens=raw.get("max_caption_tokens"), vocabulary=raw.get("vocabulary"),
        example_captions=raw.get("example_captions") or [], held_out_captions=raw.get("held_out_captions") or [],
        links={"self": f"{base}/v1/models/{raw['id']}"},
    )


@router.get("", response_model=ModelList, summary="Models served by live workers")
def list_models(request: Request, settings: SettingsDep, conn: ConnDep, caller: CallerDep) -> ModelList:
    base = str(request.base_url).rstrip("/")
    catalog = store.served_models(conn, settings)
    return ModelList(models=[_out(catalog[k], settings, base) for k in sorted(catalog)])


@router.get("/{model_id}", response_model=ModelOut, responses={404: {"content": {PROBLEM_JSON: {}}}},
            summary="One model, with its vocabulary")
def read_model(model_id: str, request: Request, settings: SettingsDep, conn: ConnDep, caller: CallerDep) -> ModelOut:
    catalog = store.served_models(conn, settings)
    if model_id not in catalog:
        raise Problem(404, "unknown-model", f"no live worker serves {model_id!r}; served: {sorted(catalog)}",
                      title="Unknown model")
    return _out(catalog[model_id], settings, str(request.base_url).rstrip("/"))
