# One image for the api and the worker (docker-compose.yml picks the command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# torch first and exactly pinned (the project's rule): its own layer, rebuilt only when the pin changes.
RUN pip install torch==2.13.0

COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY worker ./worker
COPY service ./service
RUN pip install . "fastapi>=0.115,<1" "uvicorn>=0.30,<1" "prometheus-client>=0.20,<1"

# The shipped checkpoints (GLIMPSE_CHECKPOINTS defaults to ./checkpoints).
COPY checkpoints ./checkpoints

RUN useradd --create-home --uid 10001 glimpse
USER glimpse
EXPOSE 8000
CMD ["uvicorn", "--factory", "service.main:create_app", "--http", "service.framing:ProblemHttpToolsProtocol", "--host", "0.0.0.0", "--port", "8000"]
