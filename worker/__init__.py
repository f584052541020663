"""Generation worker: RQ jobs that draw captions with DRAW/alignDRAW (entry point: `python -m worker`).

Torch-free, for the API: worker.settings, worker.protocol, worker.redis_conn, worker.queue, worker.heartbeat,
worker.render. Torch side: worker.registry, worker.jobs, worker.__main__.
"""
