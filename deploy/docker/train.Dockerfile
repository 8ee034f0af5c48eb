# syntax=docker/dockerfile:1.7
# The training image: `dfmod-train` (prepare, fit, evaluate, calibrate, export) with torch on CUDA.
#
# Build from the repository root:   docker build -f deploy/docker/train.Dockerfile -t dfmod-train:0.1.0 .
# Run on a GPU host (NVIDIA Container Toolkit), data and outputs mounted:
#   docker run --rm --gpus all --shm-size 8g -v /data:/data -v $PWD/runs:/runs dfmod-train:0.1.0 fit --help
#
# torch==2.14.1 from PyPI is built against CUDA 13.0 and brings its CUDA libraries as wheels; the CUDA 13.0
# runtime base adds what a wheel cannot: NVIDIA_REQUIRE_CUDA, so the container toolkit refuses a host whose
# driver is too old with a clear message instead of a late "no kernel image" error, and the compat libraries.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

FROM ${CUDA_IMAGE}
ARG DFMOD_UID=10001
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1
# Ubuntu 24.04's Python is 3.12 (dfmod supports >= 3.11; the worker image and CI use 3.11).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid ${DFMOD_UID} dfmod \
 && useradd --system --uid ${DFMOD_UID} --gid ${DFMOD_UID} --home-dir /home/dfmod --create-home \
      --shell /usr/sbin/nologin dfmod
WORKDIR /src
COPY . .
# The [train] extra pins torch==2.14.1 and torchvision==0.29.1 (pyproject.toml says why).
RUN python3 -m venv /opt/dfmod \
 && /opt/dfmod/bin/pip install ".[train]" \
 && /opt/dfmod/bin/python -c "import torch, torchvision, open_clip; print(torch.__version__, torch.version.cuda)" \
 && rm -rf /src
# open_clip / torch hub caches under the user's home: mount a volume there to keep CLIP weights between runs.
ENV PATH=/opt/dfmod/bin:$PATH \
    HF_HOME=/home/dfmod/.cache/huggingface \
    TORCH_HOME=/home/dfmod/.cache/torch
USER ${DFMOD_UID}:${DFMOD_UID}
WORKDIR /home/dfmod
ENTRYPOINT ["dfmod-train"]
CMD ["--help"]
