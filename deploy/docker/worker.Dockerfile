# syntax=docker/dockerfile:1.7
# The dfmod worker image: `dfmod worker` on python:3.11-slim, without torch (DESIGN.md: the worker never imports it).
#
# Build from the repository root (BuildKit reads worker.Dockerfile.dockerignore beside this file):
#   docker build -f deploy/docker/worker.Dockerfile -t dfmod-worker:0.1.0 .
# The default detector's weights (YuNet, Apache-2.0) are package data of the wheel: the image finds them without
# DFMOD_FACES__WEIGHTS_DIR. Other weights (SCRFD: insightface terms, non-commercial research only, never shipped)
# can be baked in and selected with DFMOD_FACES__WEIGHTS_DIR=/opt/dfmod/models:
#   docker build -f deploy/docker/worker.Dockerfile --build-context weights=/path/to/models -t dfmod-worker:0.1.0 .
# DFMOD_FACES__BACKEND=haar reads the cascade from Debian's opencv-data, installed below (OpenCV 5 wheels ship none).

# Python 3.11 is the project's tested minor; trixie is the Debian release the slim images follow. Patch releases
# float on purpose (security fixes); pin by digest in your registry for reproducible rebuilds.
ARG PYTHON_IMAGE=python:3.11-slim-trixie

# Default weights stage: only deploy/docker/weights/README.md. `--build-context weights=DIR` replaces it.
FROM scratch AS weights
COPY deploy/docker/weights/README.md /README.md

# --- build: one wheel for dfmod, then a virtual environment with it and its runtime dependencies -------------
FROM ${PYTHON_IMAGE} AS build
# Optional extras of pyproject.toml, comma-separated: "s3" (boto3, for s3:// media), "scrfd" (insightface).
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# insightface may build from source: give the build stage a compiler only when it is asked for.
RUN case ",${EXTRAS}," in *,scrfd,*) apt-get update \
      && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/* ;; esac
WORKDIR /src
COPY . .
# The venv's own pip builds and installs (the base's pip is not needed: a Debian python3-venv base has none).
RUN python -m venv /opt/dfmod \
 && /opt/dfmod/bin/pip wheel --no-deps --wheel-dir /wheels . \
 # The worker's dependencies only: never the [train] extra, so no torch, torchvision or open_clip.
 && wheel="$(ls /wheels/dfmod-*.whl)" \
 && /opt/dfmod/bin/pip install "${wheel}${EXTRAS:+[${EXTRAS}]}" \
 && if /opt/dfmod/bin/python -c "import torch" 2>/dev/null; then echo "torch leaked into the worker image" >&2; exit 1; fi \
 # No installer at run time (23 MB, and nothing may install into a read-only root anyway).
 && /opt/dfmod/bin/python -m pip uninstall -y -q pip setuptools \
 # Compile once here: the root filesystem is read-only at run time.
 && /opt/dfmod/bin/python -m compileall -q /opt/dfmod/lib

# --- runtime ----------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG DFMOD_UID=10001
LABEL org.opencontainers.image.title="dfmod-worker" \
      org.opencontainers.image.description="Kafka worker: faces -> Triton deepfake_clip -> verdicts" \
      org.opencontainers.image.licenses="Apache-2.0"
# opencv-data: haarcascade_frontalface_default.xml for the haar backend (worker/faces/haar.py looks in
# /usr/share/opencv4/haarcascades).
RUN apt-get update && apt-get install -y --no-install-recommends opencv-data && rm -rf /var/lib/apt/lists/* \
 && test -f /usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml
RUN groupadd --system --gid ${DFMOD_UID} dfmod \
 && useradd --system --uid ${DFMOD_UID} --gid ${DFMOD_UID} --home-dir /home/dfmod --create-home \
      --shell /usr/sbin/nologin dfmod
COPY --from=build /opt/dfmod /opt/dfmod
# Root-owned: the dfmod user can read the weights, not replace them (used only when DFMOD_FACES__WEIGHTS_DIR points here).
COPY --from=weights / /opt/dfmod/models/
ENV PATH=/opt/dfmod/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DFMOD_HTTP_PORT=9100
USER ${DFMOD_UID}:${DFMOD_UID}
WORKDIR /home/dfmod
EXPOSE 9100
# /healthz answers while the process is alive and its loops turn (Kubernetes uses its own probes instead).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DFMOD_HTTP_PORT', '9100'), timeout=4)"]
ENTRYPOINT ["dfmod"]
CMD ["worker"]
