# syntax=docker/dockerfile:1
# Serving: vLLM's OpenAI server with Tunery's LoRA resolver (`python -m serving.vllm_server`), which loads fine-tuned
# adapters from the object store (S3) at run time; no volume is shared with the trainers (docs/serving.md).
# Only Tunery's `serving` and `tunery` packages are added, on PYTHONPATH: vLLM keeps its own torch and libraries.
# Build from the repository root:  docker build -f deploy/serving.Dockerfile -t tunery/serving .
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0

FROM ${VLLM_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/tunery
COPY deploy/serving.lock deploy/
# What the resolver imports beyond vLLM's own: boto3 (S3) and pydantic-settings (Tunery's settings).
RUN python3 -m pip install --constraint deploy/serving.lock boto3==1.44.8 pydantic-settings==2.16.3
COPY serving serving
COPY tunery tunery
# The metadata that declares Tunery's vLLM general plugin (the CPU multi-LoRA ops, run in every vLLM process).
RUN python3 -c "from serving.vllm_plugin import write_plugin_metadata; write_plugin_metadata('.')" \
    && python3 -m compileall -q serving tunery \
    && groupadd --gid 10001 tunery && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tunery
ENV PYTHONPATH=/opt/tunery \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/hf \
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True \
    VLLM_NO_USAGE_STATS=1 \
    TUNERY_VLLM_ADAPTER_DIR=/tmp/tunery-adapters
# Numeric user, so that Kubernetes can check runAsNonRoot.
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["python3", "-m", "serving.vllm_server"]
