"""The serving backends as the API uses them, without a vLLM process: what vLLM could never load is refused before
any GPU time or load (tunery/servable.py), a vLLM that is down or unconfigured is a 503 with Retry-After, an API
without torch answers 503 naming the setting, and chat load on the embedded engine neither stalls the rest of the
API (its own threads, a bounded queue with 429) nor gets a default token cap OpenAI does not have.
The tests against a real vLLM are in test_vllm_serving.py."""

from __future__ import annotations

import json
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.adapters import CONFIG_FILE
from tests.conftest import TINY, chat_lines, free_port
from tests.schema import validate
from tests.serving_fixtures import register_model
from tunery import servable
from tunery.plan import TrainingPlan

ROOT = Path(__file__).resolve().parents[2]
HI = [{"role": "user", "content": "hi"}]
TARGETS = "tunery.training.lora.target_modules"


def safetensors_bytes(dtype: str) -> bytes:
    """A one-tensor safetensors file (the header is what the check reads)."""
    header = json.dumps({"base_model.model.layers.0.q_proj.lora_A.weight": {
        "dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}).encode()  # fmt: skip
    return struct.pack("<Q", len(header)) + header + b"\0\0\0\0"


def lora_config(**over: Any) -> bytes:
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    return json.dumps({**config, **over}).encode()


# ---- the rule ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("training", "param"),
    [
        ({"adapter": "lora", "lora": {"r": 16, "target_modules": "all-linear"}}, None),
        ({"adapter": "lora", "lora": {"r": 32, "target_modules": "all-linear"}}, "tunery.training.lora.r"),
        ({"adapter": "qlora", "lora": {"r": 8, "target_modules": ["q_proj", "lm_head"]}}, TARGETS),
        ({"adapter": "lora", "lora": {"r": 8, "target_modules": ["model.embed_tokens"]}}, TARGETS),
        ({"adapter": "full", "lora": {"r": 64, "target_modules": ["lm_head"]}}, None),  # a model of its own
    ],
)  # fmt: skip
def test_training_problem_table(training: dict[str, Any], param: str | None) -> None:
    plan = TrainingPlan(n_epochs=1, batch_size=1, learning_rate=1e-3, **training)
    problem = servable.training_problem(plan, max_rank=16)
    assert (problem.param if problem else None) == param


def test_adapter_problem_table() -> None:
    ok = json.loads(lora_config())
    assert servable.adapter_problem(ok, {"base_model": TINY}, TINY, 16) is None
    assert servable.adapter_problem(ok, None, TINY, 16) is None  # an adapter written elsewhere has no manifest
    for config, manifest, words in (
        ({**ok, "r": 64}, None, "rank 64"),
        ({**ok, "modules_to_save": ["lm_head"]}, None, "modules_to_save"),
        ({**ok, "use_dora": True}, None, "DoRA"),
        ({**ok, "peft_type": "IA3"}, None, "IA3"),
        (ok, {"base_model": "other-model"}, "trained on `other-model`"),
    ):
        problem = servable.adapter_problem(config, manifest, TINY, 16)
        assert problem is not None and words in problem.message and problem.param == "model"


# ---- vLLM backend, no vLLM needed ---------------------------------------------------------------------------
def test_job_vllm_cannot_load_fails_validation_naming_the_option(tiny_server_factory: Any) -> None:
    srv = tiny_server_factory(serving_backend="vllm", vllm_url="http://127.0.0.1:9", vllm_max_lora_rank=16)
    train = srv.client.files.create(file=("t.jsonl", chat_lines(12)), purpose="fine-tune").id
    for lora, param in (
        ({"r": 32}, "tunery.training.lora.r"),
        ({"target_modules": ["q_proj", "lm_head"]}, "tunery.training.lora.target_modules"),
    ):
        job = srv.client.fine_tuning.jobs.create(
            model=TINY, training_file=train, extra_body={"tunery": {"training": {"lora": lora}}}
        )
        job = srv.wait_job(job.id, {"failed", "queued", "running", "succeeded"}, timeout=60)
        assert job.status == "failed", srv.events(job.id)
        assert job.error.code == "unservable_adapter" and job.error.param == param, job.error
        assert "vLLM" in job.error.message
    # The rank the servers load passes: the job is queued.
    ok = srv.client.fine_tuning.jobs.create(
        model=TINY, training_file=train, extra_body={"tunery": {"training": {"lora": {"r": 16}}}}
    )
    assert srv.wait_job(ok.id, {"failed", "queued", "running", "succeeded"}, timeout=60).status != "failed"
    srv.client.fine_tuning.jobs.cancel(ok.id)


def test_vllm_down_or_unconfigured_is_503_with_retry_after(tiny_server_factory: Any) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    srv = tiny_server_factory(serving_backend="vllm", vllm_url=down, vllm_retry_after_seconds=7)
    started = time.monotonic()
    r = srv.http.post("/v1/chat/completions", json={"model": TINY, "messages": HI})
    assert time.monotonic() - started < 5  # never a hang
    assert r.status_code == 503, r.text
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["type"] == "server_error" and r.headers["retry-after"] == "7"
    assert "cannot be reached" in r.json()["error"]["message"] and "Traceback" not in r.text
    r = srv.http.post("/v1/completions", json={"model": TINY, "prompt": "hi", "stream": True})
    assert r.status_code == 503 and r.headers["retry-after"] == "7"

    none = tiny_server_factory(serving_backend="vllm", data_dir=srv.settings.data_dir.parent / "other")
    r = none.http.post("/v1/chat/completions", json={"model": TINY, "messages": HI})
    assert r.status_code == 503 and "TUNERY_VLLM_URL" in r.json()["error"]["message"]
    assert r.headers["x-should-retry"] == "false"  # retrying does not help until the configuration changes


def test_adapters_vllm_cannot_serve_are_400_before_loading(tiny_server_factory: Any) -> None:
    """The checks read the adapter's files from the store; vLLM (here: nothing at all) is never asked."""
    srv = tiny_server_factory(serving_backend="vllm", vllm_url=f"http://127.0.0.1:{free_port()}")
    manifest = json.dumps({"base_model": TINY}).encode()
    weights = safetensors_bytes("F32")
    register_model(
        srv,
        "ft:tiny-llama:personal:big:r32",
        "jobs/ftjob-r32/model/",
        {CONFIG_FILE: lora_config(r=32), "adapter_model.safetensors": weights, "tunery_manifest.json": manifest},
    )
    register_model(
        srv,
        "ft:tiny-llama:personal:head:lmh",
        "jobs/ftjob-lmh/model/",
        {CONFIG_FILE: lora_config(target_modules=["q_proj", "lm_head"]), "adapter_model.safetensors": weights},
    )
    register_model(
        srv,
        "ft:tiny-llama:personal:other:oth",
        "jobs/ftjob-oth/model/",
        {
            CONFIG_FILE: lora_config(),
            "adapter_model.safetensors": weights,
            "tunery_manifest.json": json.dumps({"base_model": "smollm2-135m-instruct"}).encode(),
        },
    )
    register_model(
        srv,
        "ft:tiny-llama:personal:int8:i8",
        "jobs/ftjob-i8/model/",
        {CONFIG_FILE: lora_config(), "adapter_model.safetensors": safetensors_bytes("I8")},
    )
    register_model(
        srv,
        "ft:tiny-llama:personal:junk:jnk",
        "jobs/ftjob-jnk/model/",
        {CONFIG_FILE: lora_config(), "adapter_model.safetensors": b"not safetensors"},
    )
    register_model(srv, "ft:tiny-llama:personal:full:ful", "jobs/ftjob-ful/model/",
              {"config.json": b"{}", "model.safetensors": weights})  # fmt: skip
    for model, code, words in (
        ("ft:tiny-llama:personal:big:r32", "model_not_servable", "rank 32"),
        ("ft:tiny-llama:personal:head:lmh", "model_not_servable", "lm_head"),
        ("ft:tiny-llama:personal:other:oth", "model_not_servable", "trained on `smollm2-135m-instruct`"),
        ("ft:tiny-llama:personal:full:ful", "model_not_served", "TUNERY_VLLM_URLS"),
        ("ft:tiny-llama:personal:int8:i8", "model_not_servable", "weights are I8"),
        ("ft:tiny-llama:personal:junk:jnk", None, "unreadable adapter files"),
    ):
        r = srv.http.post("/v1/chat/completions", json={"model": model, "messages": HI})
        assert r.status_code == 400, r.text
        validate(r.json(), "ErrorResponse")
        err = r.json()["error"]
        assert (err["param"], err["code"]) == ("model", code) and words in err["message"], err


def test_api_without_torch_answers_503_naming_the_setting(tmp_path: Path) -> None:
    """The control-plane image has no torch: with the embedded backend, chat is a clear 503, never a 500."""
    code = f"""
import sys
for m in ("torch", "transformers", "peft"):
    sys.modules[m] = None  # as if not installed
from fastapi.testclient import TestClient
from api.server import build
from tunery.settings import Settings
app, shutdown = build(Settings(data_dir={str(tmp_path)!r}, demo_model=False, base_models={{"m": "/nonexistent"}}))
body = {{"model": "m", "messages": [{{"role": "user", "content": "x"}}]}}
r = TestClient(app).post("/v1/chat/completions", json=body)
print(r.status_code, r.json()["error"]["message"])
shutdown()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("503 ") and "TUNERY_SERVING_BACKEND=vllm" in out.stdout, out.stdout


def test_api_role_with_vllm_never_imports_torch(tmp_path: Path) -> None:
    """`tunery serve --role api` with the vLLM backend serves chat without ever loading torch or transformers."""
    code = f"""
import sys
from fastapi.testclient import TestClient
from api.server import build
from tunery.settings import Settings
settings = Settings(data_dir={str(tmp_path)!r}, demo_model=False, base_models={{"m": "/nonexistent"}},
                    serving_backend="vllm", vllm_url="http://127.0.0.1:{free_port()}", allow_open=True)
app, shutdown = build(settings, role="api")
c = TestClient(app)
body = {{"model": "m", "messages": [{{"role": "user", "content": "x"}}]}}
chat = c.post("/v1/chat/completions", json=body).status_code
legacy = c.post("/v1/completions", json={{"model": "m", "prompt": "x"}}).status_code
print("CHAT", chat, legacy)
shutdown()
print("HEAVY", sorted(m for m in ("torch", "transformers", "peft", "trl") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "CHAT 503 503" in out.stdout and "HEAVY []" in out.stdout, out.stdout


def test_fully_fine_tuned_model_named_in_vllm_urls_is_proxied_as_a_model_of_its_own(tiny_server_factory: Any) -> None:
    """A full model is no adapter: named in TUNERY_VLLM_URLS it goes to its own vLLM, under its ft: name."""
    own = f"http://127.0.0.1:{free_port()}"  # its vLLM; down here, which shows the request went there
    full = "ft:tiny-llama:personal:full:own"
    srv = tiny_server_factory(serving_backend="vllm", vllm_url=f"http://127.0.0.1:{free_port()}", vllm_urls={full: own})
    register_model(srv, full, "jobs/ftjob-own/model/", {"config.json": b"{}", "model.safetensors": b"x"})
    r = srv.http.post("/v1/chat/completions", json={"model": full, "messages": HI})
    assert r.status_code == 503 and own in r.json()["error"]["message"], r.text


# ---- embedded backend ------------------------------------------------------------------------------------------
def test_embedded_refuses_what_it_cannot_do_naming_the_parameter(server: Any) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    for path, body, param in (
        ("/v1/chat/completions", {"model": TINY, "messages": HI, "n": 2}, "n"),
        ("/v1/chat/completions", {"model": TINY, "messages": HI, "tools": [tool]}, "tools"),
        ("/v1/chat/completions", {"model": TINY, "messages": HI, "logprobs": True}, "logprobs"),
        ("/v1/chat/completions", {"model": TINY, "messages": HI, "response_format": {"type": "json_object"}},
         "response_format"),
        ("/v1/chat/completions", {"model": TINY, "messages": HI, "tool_choice": "auto"}, "tool_choice"),
        ("/v1/chat/completions", {"model": TINY, "messages": HI, "stream_options": {"include_usage": True}},
         "stream_options"),
        ("/v1/completions", {"model": TINY, "prompt": "hi"}, "model"),
    ):  # fmt: skip
        r = server.http.post(path, json=body)
        assert r.status_code == 400, (body, r.text)
        validate(r.json(), "ErrorResponse")
        assert r.json()["error"]["param"] == param, r.json()


@pytest.mark.integration
def test_embedded_default_length_is_the_context_not_512(server: Any) -> None:
    """OpenAI has no default cap: without max_tokens a reply runs to the model's context (2048 here). The random
    tiny model's greedy reply never picks its EOS, so it runs to the end."""
    r = server.http.post("/v1/chat/completions", json={"model": TINY, "messages": HI, "temperature": 0})
    usage = r.json()["usage"]
    assert r.json()["choices"][0]["finish_reason"] == "length", usage
    assert usage["completion_tokens"] > 512 and usage["prompt_tokens"] + usage["completion_tokens"] == 2048, usage


def chat_load(base_url: str, body: dict[str, Any], n: int) -> tuple[list[int], list[str], list[float]]:
    """``n`` concurrent chats; meanwhile ``GET /v1/models`` is timed. Returns (statuses, retry-afters, latencies)."""
    statuses: list[int] = []
    retry: list[str] = []
    latencies: list[float] = []
    go = threading.Event()

    def chat() -> None:
        go.wait()
        with httpx.Client(base_url=base_url, timeout=300) as c:
            r = c.post("/v1/chat/completions", json=body)
        statuses.append(r.status_code)
        if r.status_code == 429:
            retry.append(r.headers.get("retry-after", ""))

    threads = [threading.Thread(target=chat) for _ in range(n)]
    for t in threads:
        t.start()
    go.set()
    time.sleep(0.5)  # the chats are in
    with httpx.Client(base_url=base_url, timeout=60) as c:
        while any(t.is_alive() for t in threads) and len(latencies) < 20:
            started = time.monotonic()
            assert c.get("/v1/models").status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.1)
    for t in threads:
        t.join()
    return statuses, retry, latencies


def test_embedded_chat_load_never_stalls_the_api(tiny_server_factory: Any) -> None:
    srv = tiny_server_factory(serving_max_queue=8)
    body = {"model": TINY, "messages": HI, "max_tokens": 1, "temperature": 0}
    srv.http.post("/v1/chat/completions", json=body)  # the model is loaded
    statuses, retry, latencies = chat_load(srv.base_url, {**body, "max_tokens": 64}, 60)
    print(f"embedded: {statuses.count(200)} served, {statuses.count(429)} told to retry; GET /v1/models max "
          f"{max(latencies):.3f}s over {len(latencies)} calls")  # fmt: skip
    assert latencies and statistics.median(latencies) < 0.5 and max(latencies) < 5.0, latencies
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 8 and statuses.count(429) > 0
    assert set(retry) == {"2"}


def test_embedded_slots_come_back_when_streams_end_early(tiny_server_factory: Any) -> None:
    """Clients that leave mid-stream give their slot back: a queue of 2 still serves after 6 of them."""
    srv = tiny_server_factory(serving_max_queue=2)
    body = {"model": TINY, "messages": HI, "max_tokens": 500, "temperature": 0, "stream": True}
    for _ in range(6):
        with srv.http.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the first chunk, then the client hangs up
    deadline = time.monotonic() + 30
    while True:  # each abandoned generation stops at its next token
        r = srv.http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2})
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        assert r.status_code == 429
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    assert srv.app.state.ctx.serving._admitted == 0
