# syntax=docker/dockerfile:1
# The trainer: `python -m trainer --spec <ref>`, run by the scheduler as a Kubernetes Job on GPU nodes.
# torch from PyPI is the CUDA build for Linux x86_64 (torch 2.13: CUDA 13, its libraries come as nvidia-* wheels, see
# deploy/trainer.lock), so the base image only needs the CUDA basics of the same major version; GPU nodes need a
# driver that supports CUDA 13 (580 or later).
# Build from the repository root:  docker build -f deploy/trainer.Dockerfile -t tunery/trainer .
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
# Versions come with the pinned base image (Ubuntu 24.04's python3.12); pinning Ubuntu's point releases here would
# break the build whenever the archive moves on.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3.12 -m venv /opt/tunery && /opt/tunery/bin/pip install pip==25.3
WORKDIR /src
COPY deploy/trainer.lock deploy/
# torch first, in its own layer: it is most of the image and changes least often.
RUN /opt/tunery/bin/pip install --constraint deploy/trainer.lock torch==2.13.0
COPY pyproject.toml README.md ./
COPY api api
COPY scheduler scheduler
COPY serving serving
COPY trainer trainer
COPY tunery tunery
# bitsandbytes for QLoRA (4-bit nf4/fp4 base weights); vLLM, the version the tests run (tests/vllm/setup.sh), samples
# a reinforcement job's answers colocated with the trainer on the GPU (TUNERY_TRAINER_GENERATION=auto,
# trainer/generation.py). vLLM 0.32 requires transformers below 5.20: the lock has 5.19.
RUN /opt/tunery/bin/pip install --constraint deploy/trainer.lock '.[train]' bitsandbytes==0.50.2 vllm==0.32.0

FROM ${CUDA_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 tunery \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tunery
COPY --from=build /opt/tunery /opt/tunery
RUN /opt/tunery/bin/python -m compileall -q /opt/tunery/lib
# Caches go to /tmp (an emptyDir in the pod); no model hub is ever reached.
ENV PATH=/opt/tunery/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1 \
    TRITON_CACHE_DIR=/tmp/triton
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["python", "-m", "trainer"]
