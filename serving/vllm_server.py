"""``python -m serving.vllm_server <vLLM's arguments>``: vLLM's OpenAI server with Tunery's LoRA resolver.

Runs in vLLM's environment (the serving image, or the interpreter of ``TUNERY_VLLM_PYTHON``) with Tunery's source
on ``PYTHONPATH``; it registers the resolver (serving/vllm_plugin.py) in the API-server process, then hands over to
``vllm.entrypoints.openai.api_server`` with the same arguments. ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` is turned on:
without it vLLM never asks a resolver.
"""

from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    os.environ.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    from serving.vllm_cpu_lora import patch
    from serving.vllm_plugin import install_unload_hook, register

    register()
    install_unload_hook()  # a deleted model's adapter leaves the engine and the resolver's cache
    patch()  # this process's share; the workers get it through the general plugin (serving/vllm_plugin.py)
    sys.argv[0] = "vllm.entrypoints.openai.api_server"
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
