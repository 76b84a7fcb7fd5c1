"""The embedded serving engine: generation, sampling, stop strings, streaming, LoRA adapters, errors."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from serving.engine import EmbeddedEngine
from serving.errors import AdapterNotFound, EngineError
from serving.protocol import Generation, ModelRef
from serving.sampling import SamplingParams
from serving.text import emittable, find_stop, stop_holdback
from tests import serving_fixtures
from tests.serving_fixtures import ADAPTERS, Adapters, reference_greedy

adapters = serving_fixtures.adapters  # a fixture (tiny_model_dir and demo_model_dir come from conftest)

ONE, TWO = list(ADAPTERS)
HELLO = [{"role": "user", "content": "Hello! Who are you?"}]
GREEDY = SamplingParams(max_tokens=12, temperature=0)


@pytest.fixture(scope="module")
def engine(adapters: Adapters, tmp_path_factory: pytest.TempPathFactory) -> EmbeddedEngine:
    return EmbeddedEngine(adapters.store, tmp_path_factory.mktemp("serving-cache"), device="cpu", max_new_tokens=256)


@pytest.fixture(scope="module")
def base(tiny_model_dir: Path) -> ModelRef:
    return ModelRef(base_name="tiny-llama", base_path=str(tiny_model_dir))


def ft(base: ModelRef, name: str) -> ModelRef:
    return ModelRef(base.base_name, base.base_path, adapter_name=name, adapter_prefix=ADAPTERS[name][0])


def loaded_base(engine: EmbeddedEngine, ref: ModelRef) -> Any:
    return next(b for b in engine._bases.values() if b.name == ref.base_name)


def collect(it: Any) -> tuple[list[str], Generation]:
    items = list(it)
    assert isinstance(items[-1], Generation)
    assert all(isinstance(x, str) for x in items[:-1])
    return items[:-1], items[-1]


def test_import_does_not_import_torch() -> None:
    code = (
        "import sys, serving, serving.engine\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_stop_string_helpers() -> None:
    assert find_stop("hello world", ["wor", "lo"]) == 3 and find_stop("hello", ["x", ""]) == -1
    assert stop_holdback("the end of li", ["line", "xyz"]) == 2  # "li" may become "line"
    assert stop_holdback("the end", ["line"]) == 0 and stop_holdback("abc", []) == 0
    assert emittable("caf\ufffd", []) == 3  # an unfinished multi-byte character waits
    assert emittable("Hello Wo", ["World"]) == 6


def test_greedy_is_deterministic_and_usage_is_exact(engine: EmbeddedEngine, base: ModelRef) -> None:
    from transformers import AutoTokenizer

    a = engine.generate(base, HELLO, GREEDY)
    b = engine.generate(base, HELLO, GREEDY)
    assert a == b
    assert a.finish_reason == "length" and a.completion_tokens == 12
    tokenizer = AutoTokenizer.from_pretrained(base.base_path)
    prompt: Any = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, tokenize=True)
    prompt = prompt["input_ids"]
    assert a.prompt_tokens == len(prompt) == engine.count_prompt_tokens(base, HELLO)
    # "developer" is "system" to the chat template; text content parts are joined.
    dev: list[dict[str, Any]] = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]
    sys_ = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert engine.count_prompt_tokens(base, dev) == engine.count_prompt_tokens(base, sys_)


def test_seed_makes_sampling_reproducible(engine: EmbeddedEngine, base: ModelRef) -> None:
    ref = ft(base, ONE)

    def sample(seed: int, top_p: float = 1.0) -> str:
        return engine.generate(ref, HELLO, SamplingParams(max_tokens=8, temperature=1.0, top_p=top_p, seed=seed)).text

    assert sample(7) == sample(7)
    assert sample(7, top_p=0.9) == sample(7, top_p=0.9)
    assert len({sample(7), sample(8), sample(9)}) > 1


def test_adapters_match_reference_models(
    engine: EmbeddedEngine, base: ModelRef, adapters: Adapters, tiny_model_dir: Path
) -> None:
    texts = {}
    for name in (None, ONE, TWO):
        ref = base if name is None else ft(base, name)
        got = engine.generate(ref, HELLO, GREEDY)
        expected = reference_greedy(tiny_model_dir, None if name is None else adapters.dirs[name], HELLO, 12)
        assert got.text == expected, name
        texts[name] = got.text
    assert len(set(texts.values())) == 3  # base, adapter one and adapter two all differ
    # Switching back and forth leaks no adapter state, serially or from concurrent threads.
    order = [ONE, None, TWO, ONE, TWO, None, None, ONE]
    for name in order:
        assert engine.generate(base if name is None else ft(base, name), HELLO, GREEDY).text == texts[name]
    with ThreadPoolExecutor(4) as pool:
        futures = [
            (name, pool.submit(engine.generate, base if name is None else ft(base, name), HELLO, GREEDY))
            for name in order * 2
        ]
        for name, future in futures:
            assert future.result().text == texts[name]
    # The cached adapter holds no pickle, and its folder name is safe.
    cached = engine.adapters.path(ONE)
    assert (cached / "adapter_model.safetensors").is_file() and not (cached / "optimizer.pt").exists()
    assert ":" not in cached.name and "." not in cached.name


def test_stop_strings_truncate_and_stream_agrees(engine: EmbeddedEngine, base: ModelRef) -> None:
    ref = ft(base, ONE)
    full = engine.generate(ref, HELLO, SamplingParams(max_tokens=24, temperature=0)).text
    words = full.split()
    assert len(words) > 4, full
    stop = words[3][:3]  # a stop string that starts inside the fourth word
    at = full.find(stop)
    for stops in ([stop], ["\u2603 never", stop]):
        params = SamplingParams(max_tokens=24, temperature=0, stop=stops)
        gen = engine.generate(ref, HELLO, params)
        assert gen.text == full[:at] and gen.finish_reason == "stop"
        assert gen.completion_tokens < 24
        deltas, final = collect(engine.stream(ref, HELLO, params))
        assert "".join(deltas) == final.text == gen.text
        assert final == gen
    # A stop string that never appears changes nothing.
    gen = engine.generate(ref, HELLO, SamplingParams(max_tokens=24, temperature=0, stop=["\u2603"]))
    assert gen.text == full and gen.finish_reason == "length"


def test_stream_matches_generate(engine: EmbeddedEngine, base: ModelRef) -> None:
    for ref in (base, ft(base, TWO)):
        gen = engine.generate(ref, HELLO, GREEDY)
        deltas, final = collect(engine.stream(ref, HELLO, GREEDY))
        assert "".join(deltas) == gen.text
        assert final == gen


def test_closing_a_stream_early_stops_generation(engine: EmbeddedEngine, base: ModelRef) -> None:
    engine.generate(base, HELLO, GREEDY)  # loaded
    loaded = loaded_base(engine, base)
    calls = []

    def slow(module: Any, args: Any, output: Any) -> None:
        calls.append(1)
        time.sleep(0.02)

    handle = loaded.model.register_forward_hook(slow)
    try:
        stream = engine.stream(base, HELLO, SamplingParams(max_tokens=200, temperature=0))
        assert isinstance(next(stream), str)
        stream.close()  # what the API does when the client goes away
        assert loaded.lock.acquire(timeout=5)  # the worker stopped and let go of the model
        loaded.lock.release()
        assert len(calls) < 20
    finally:
        handle.remove()
    # Dropping an un-closed iterator after one item is no different; the next request runs normally.
    stream = engine.stream(base, HELLO, SamplingParams(max_tokens=200, temperature=0))
    next(stream)
    del stream
    assert engine.generate(base, HELLO, GREEDY).completion_tokens == 12


def test_a_stream_is_closed_from_another_thread_while_one_waits_for_its_next_token(
    engine: EmbeddedEngine, base: ModelRef
) -> None:
    """What the API does when a client leaves: its event loop closes the stream while a pool thread waits in next().
    Closing a generator that another thread runs is not safe (it crashed the interpreter in CI); a Stream's close()
    is: the waiting next() ends the iteration and the generation stops at its next token."""
    import threading

    engine.generate(base, HELLO, GREEDY)  # loaded
    loaded = loaded_base(engine, base)
    calls: list[int] = []

    def slow(module: Any, args: Any, output: Any) -> None:
        calls.append(1)
        time.sleep(0.3)

    handle = loaded.model.register_forward_hook(slow)
    try:
        stream = engine.stream(base, HELLO, SamplingParams(max_tokens=200, temperature=0))
        assert isinstance(next(stream), str)
        got: list[Any] = []
        waiting = threading.Thread(target=lambda: got.append(next(stream, "ended")))
        waiting.start()
        time.sleep(0.05)  # it waits for the next token
        stream.close()
        waiting.join(timeout=5)
        assert not waiting.is_alive() and got == ["ended"]
        assert loaded.lock.acquire(timeout=5)  # the generation stopped and let go of the model
        loaded.lock.release()
        assert len(calls) < 10
        assert next(stream, "ended") == "ended"
    finally:
        handle.remove()


def test_every_model_call_runs_on_one_thread_and_close_stops_them_all(
    adapters: Adapters, base: ModelRef, tmp_path: Path
) -> None:
    """Generations, streams and adapter loads all run on the engine's one model thread (torch keeps its CPU thread
    pool per calling thread); close() stops a running stream at its next token and refuses what comes after."""
    import threading

    from serving.errors import ServingUnavailable

    engine = EmbeddedEngine(adapters.store, tmp_path / "cache", device="cpu")
    engine.generate(base, HELLO, GREEDY)
    loaded = loaded_base(engine, base)
    threads: set[threading.Thread] = set()

    def where(module: Any, args: Any, output: Any) -> None:
        threads.add(threading.current_thread())
        time.sleep(0.01)

    handle = loaded.model.register_forward_hook(where)
    with ThreadPoolExecutor(4) as pool:  # callers on several threads, as the API's are
        done = list(pool.map(lambda ref: engine.generate(ref, HELLO, GREEDY), [base, ft(base, ONE), base]))
        assert [g.completion_tokens for g in done] == [12, 12, 12]
        assert (
            collect(pool.submit(lambda: list(engine.stream(base, HELLO, GREEDY))).result())[1].completion_tokens == 12
        )
    assert len(threads) == 1 and next(iter(threads)).name.startswith("tunery-model"), threads
    handle.remove()  # PeftModel wraps the base now: hook the model that runs
    handle = loaded.model.register_forward_hook(where)

    stream = engine.stream(base, HELLO, SamplingParams(max_tokens=500, temperature=0))
    assert isinstance(next(stream), str)
    engine.close()  # waits for the model thread: the stream was stopped at its next token
    assert not next(iter(threads)).is_alive()
    with pytest.raises(ServingUnavailable):
        list(stream)  # what it had made, then the news that it was stopped
    with pytest.raises(ServingUnavailable):
        engine.generate(base, HELLO, GREEDY)
    late = engine.stream(base, HELLO, GREEDY)
    with pytest.raises(ServingUnavailable):
        next(late)
    assert next(late, "ended") == "ended"  # refused once, then ended: never a wait for items that cannot come
    handle.remove()


def test_the_model_runs_with_the_cpu_threads_it_is_given_now(
    adapters: Adapters, base: ModelRef, tmp_path: Path
) -> None:
    """The engine asks ``cpu_threads`` before each call into the model and at every token, and the model runs with
    that many torch threads: a trainer that starts during a long answer takes its cores from the next token on."""
    import torch

    asked: list[int] = []
    now = {"threads": 3}

    def cpu_threads() -> int:
        asked.append(now["threads"])
        return now["threads"]

    engine = EmbeddedEngine(adapters.store, tmp_path / "cache", device="cpu", cpu_threads=cpu_threads)
    ran: list[int] = []
    try:
        engine.generate(base, HELLO, GREEDY)  # loads the model
        hook = loaded_base(engine, base).model.register_forward_hook(
            lambda *_: ran.append(torch.get_num_threads())  # on the model thread, as the model runs
        )
        assert engine.generate(base, HELLO, GREEDY).completion_tokens == 12
        assert ran == [3] * 12
        ran.clear()
        stream = engine.stream(base, HELLO, SamplingParams(max_tokens=40, temperature=0))
        first = next(stream)
        assert isinstance(first, str)
        now["threads"] = 1  # a trainer started
        *_, done = stream
        assert isinstance(done, Generation) and done.completion_tokens == 40
        # Up to a few tokens were already made while the first text was held back; the rest ran with 1 thread.
        assert ran[0] == 3 and ran[-1] == 1 and ran.count(1) >= 30, ran
        assert ran == sorted(ran, reverse=True)
        hook.remove()
        now["threads"] = 0  # never none
        assert engine._on_model_thread(torch.get_num_threads) == 1
        assert len(asked) >= 12 + 40  # every token asks
    finally:
        engine.close()


def test_unload_and_missing_adapters(engine: EmbeddedEngine, base: ModelRef, adapters: Adapters) -> None:
    ref_one, ref_two = ft(base, ONE), ft(base, TWO)
    two = engine.generate(ref_two, HELLO, GREEDY).text
    one = engine.generate(ref_one, HELLO, GREEDY).text
    plain = engine.generate(base, HELLO, GREEDY).text
    engine.unload(ONE)  # the active adapter (the base request ran with it disabled)
    assert not engine.adapters.path(ONE).exists()
    assert engine.generate(ref_two, HELLO, GREEDY).text == two
    assert engine.generate(base, HELLO, GREEDY).text == plain
    # Unloading the last adapter leaves the plain base model; unknown names are ignored.
    engine.unload(TWO)
    engine.unload("ft:tiny-llama:personal:never:loaded")
    loaded = loaded_base(engine, base)
    assert not loaded.adapters and not hasattr(loaded.model, "peft_config")
    assert engine.generate(base, HELLO, GREEDY).text == plain
    # Still in the store: a later request loads it again.
    assert engine.generate(ref_one, HELLO, GREEDY).text == one
    missing = ModelRef(base.base_name, base.base_path, "ft:tiny-llama:personal:x:gone", "jobs/ftjob-gone/model/")
    with pytest.raises(AdapterNotFound) as e:
        engine.generate(missing, HELLO, GREEDY)
    assert isinstance(e.value, EngineError) and e.value.param == "model"
    with pytest.raises(AdapterNotFound):
        next(iter(engine.stream(missing, HELLO, GREEDY)))
    with pytest.raises(AdapterNotFound):
        engine.generate(ModelRef(base.base_name, base.base_path, "ft:no-prefix", None), HELLO, GREEDY)


def test_client_errors(engine: EmbeddedEngine, base: ModelRef) -> None:
    long = [{"role": "user", "content": "hello " * 3000}]
    with pytest.raises(EngineError) as e:
        engine.generate(base, long, GREEDY)
    assert e.value.param == "messages" and e.value.code == "context_length_exceeded"
    with pytest.raises(EngineError) as e:
        engine.generate(base, HELLO, SamplingParams(max_tokens=5000))
    assert e.value.param == "max_tokens"
    bad: list[tuple[list[dict], SamplingParams, str]] = [
        ([], GREEDY, "messages"),
        ([{"role": "wizard", "content": "hi"}], GREEDY, "messages[0].role"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], GREEDY, "messages[0].content[0]"),
        (HELLO, SamplingParams(max_tokens=0), "max_tokens"),
        (HELLO, SamplingParams(temperature=3), "temperature"),
        (HELLO, SamplingParams(top_p=1.5), "top_p"),
        (HELLO, SamplingParams(presence_penalty=-2.5), "presence_penalty"),
    ]
    for messages, params, param in bad:
        with pytest.raises(EngineError) as e:
            engine.generate(base, messages, params)
        assert e.value.param == param
        with pytest.raises(EngineError):
            next(iter(engine.stream(base, messages, params)))
    # Without max_tokens the engine's cap applies.
    assert engine.generate(base, HELLO, SamplingParams(temperature=0)).completion_tokens == engine.max_new_tokens
    # The lock was never left held.
    assert engine.generate(base, HELLO, GREEDY).finish_reason == "length"


@pytest.mark.slow
def test_demo_model_answers(demo_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from tunery.storage import LocalObjectStore

    engine = EmbeddedEngine(LocalObjectStore(tmp_path / "objects"), tmp_path / "cache", device="cpu")
    ref = ModelRef("smollm2-135m-instruct", str(demo_model_dir))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    gen = engine.generate(ref, messages, SamplingParams(temperature=0, max_tokens=40))
    assert "Paris" in gen.text and gen.finish_reason == "stop"  # ended by <|im_end|>
    tokenizer = AutoTokenizer.from_pretrained(str(demo_model_dir))
    # The completion is the answer's tokens plus the EOS token.
    assert gen.completion_tokens == len(tokenizer(gen.text, add_special_tokens=False)["input_ids"]) + 1
    deltas, final = collect(engine.stream(ref, messages, SamplingParams(temperature=0, max_tokens=40)))
    assert "".join(deltas) == gen.text and final == gen


def test_incremental_detokenizer_matches_a_full_decode(tiny_model_dir: Path) -> None:
    """Decoding a reply token by token (only the last few each step) gives the full decode's text, multi-byte
    characters split across tokens included, and never shows half a character."""
    import threading

    from transformers import AutoTokenizer

    from serving.text import Detokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    text = "Héllo wörld: 世界, naïve café 🎉🎉 — ok!\n  indented\tTAB ÅÄÖ 日本語のテキスト"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    detok = Detokenizer(tok, threading.Lock())
    seen = []
    for i in range(1, len(ids) + 1):
        seen.append(detok.add(ids[:i]))
        assert "\ufffd" not in seen[-1]
        assert seen[-1] == "" or text.startswith(seen[-1])
    assert detok.finish(ids) == tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) == text
    assert all(a == b[: len(a)] for a, b in itertools.pairwise(seen))  # text only grows
