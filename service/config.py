"""The API's settings: the product's one `Settings` (worker.settings) plus the fields only the HTTP side reads.

Environment: `GLIMPSE_*` like the rest (`GLIMPSE_API_KEYS=key1,key2`, `GLIMPSE_MAX_QUEUE_DEPTH=500`, ...).
These fields belong in `worker.settings.Settings` itself; until its owner moves them there, this subclass adds
them, so there is still one settings object and one environment namespace.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from worker.settings import Settings


class ApiSettings(Settings):
    # --- HTTP ---
    default_model: str = "aligndraw-mnist-captions-blind-keys"  # POST /v1/generations without `model` (README)
    max_body_bytes: int = Field(64 * 1024, ge=1024)  # 16 captions × 500 chars fit ~10× over
    # POSTs that carry images (base64 PNGs): 64 images of the 64 KiB limit each, as base64, fit.
    max_image_body_bytes: int = Field(6 * 2**20, ge=1024)
    max_queue_depth: int = Field(1000, ge=0)  # waiting jobs over all queues; beyond it POST → 503 + Retry-After
    queue_full_retry_after: int = Field(10, ge=1)  # seconds, the Retry-After of that 503
    # --- the job store's memory (docs/api.md, "Limits") ---
    # A new job is refused (503 storage-full) unless Redis's used memory plus the job's worst-case result bytes stay
    # under this share of its maxmemory: the rest is headroom for running jobs, heartbeats and RQ's records.
    store_fill_limit: float = Field(0.8, gt=0, le=1)
    storage_full_retry_after: int = Field(30, ge=1)  # seconds: results expire after result_ttl and free memory
    # The API's Redis commands retry through a blip this long, then the request gets 503 storage-unavailable.
    request_redis_retry_seconds: float = Field(1.0, ge=0)
    # --- auth (off when empty) ---
    api_keys: Annotated[list[str], NoDecode] = []  # GLIMPSE_API_KEYS: comma-separated bearer tokens
    rate_limit: int = Field(120, ge=0)  # requests per key per window (0: no limit)
    rate_window: int = Field(60, ge=1)  # seconds
    auth_fail_limit: int = Field(20, ge=0)  # failed bearer authentications per client address per window (0: no limit)
    auth_fail_window: int = Field(60, ge=1)  # seconds; past the limit that address gets 429 until the window ends
    # --- streaming ---
    # SSE and long polls wake on the worker's announcement (service.events); without one they look again after this.
    events_poll_interval: float = Field(1.0, gt=0)
    max_wait: float = Field(30.0, ge=0)  # seconds: the most a GET …?wait= holds a request
    # PNG bytes one status read may inline (`response_format=b64_json`); beyond it 422, fetch the images by URL.
    # 64 images at scale 4 from any shipped model are bounded by 3.6 MiB (worker.protocol.png_bound).
    max_inline_bytes: int = Field(16 * 2**20, ge=0)
    # A stream or long poll reads its job's steps at most this often however fast they are announced (a paper-size
    # step takes ~10 ms: reading on every one cost the API nearly as much CPU as the worker in one bench run); a
    # job's end is read at once.
    events_min_interval: float = Field(0.05, ge=0)
    events_keepalive: float = Field(15.0, gt=0)  # SSE comment line when nothing happened this long
    expired_grace: int = Field(86400, ge=0)  # seconds a job id still answers "expired" after its results are gone

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str) and v.strip().startswith("["):  # a JSON list ("[]": no keys), not a key named "[]"
            return json.loads(v)
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v


@lru_cache
def get_api_settings() -> ApiSettings:
    return ApiSettings()
