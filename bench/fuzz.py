"""Fuzzing for a wall-clock budget: schemathesis against a real Tunery serving a tiny model, with OpenAI's published
schema of the operations Tunery serves and with Tunery's own ``/openapi.json``.

    .venv/bin/python bench/fuzz.py [--seconds 600] [--documents openai,tunery] [--examples 25] [--seed 1]
        [--rounds N] [--only REGEX] [--postgresql]

The harness of tests/api/test_fuzz.py (tests/fuzzing.py): for every operation of a document, ``--examples``
generated requests that fit its schema and as many that do not, first with random ids and then (a second pass) with
the ids of real objects made for the round (a validated training file, a pending upload, a queued job with
checkpoints; the tiny base model in bodies). Every answer is checked: no 5xx, the status, media type and schema its
document declares, a stream's events OpenAI's chunks, every error OpenAI's error object. Rounds alternate the
documents, each with fresh objects and its own seed (``--seed`` + round), until ``--seconds`` run out (the round
under way stops there) or ``--rounds`` are done (``--rounds 1 --examples 15 --seed 11`` is the budget of
tests/api/test_fuzz.py). The server keeps its state across rounds (jobs and files accumulate, as on a real one).

Prints per operation the requests sent, the seconds spent (generating and sending) and the answers' statuses, then
every distinct failure with the request that showed it, as a curl command (its key: ``Authorization: Bearer``
tests.fuzzing.API_KEY). The server's own log (tracebacks of a 500 included) goes to stderr with the progress.
Exit status 1 when something failed, 0 otherwise. ``--postgresql``: the metadata store is a fresh database on the
machine's PostgreSQL (TUNERY_TEST_POSTGRES_URL) rather than SQLite; ``--only``: the operations whose label (``POST
/v1/chat/completions``, ``GET /files``) matches the regular expression.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

from hypothesis.errors import HypothesisDeprecationWarning

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import fuzzing
from tests.conftest import MODEL_CACHE, TINY, start_server


def tiny_model() -> Path:
    """The tests' tiny random Llama (tests/conftest.py), made once from the demo model's tokenizer."""
    from trainer.models import make_tiny_llama, prepare_demo_model

    out = MODEL_CACHE / "tiny-llama"
    if not (out / "config.json").is_file():
        make_tiny_llama(prepare_demo_model(MODEL_CACHE / "smollm2-135m-instruct"), out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600, help="wall-clock budget (default 600)")
    ap.add_argument("--documents", default=",".join(fuzzing.DOCUMENTS), help="openai, tunery or both")
    ap.add_argument("--examples", type=int, default=25, help="per operation, mode and pass in a round")
    ap.add_argument("--seed", type=int, default=1, help="the first round's; each round adds one")
    ap.add_argument("--rounds", type=int, default=0, help="stop after this many rounds (0: when --seconds run out)")
    ap.add_argument("--only", default=".*", help="a regular expression of the operations to fuzz")
    ap.add_argument("--postgresql", action="store_true", help="PostgreSQL as the metadata store")
    args = ap.parse_args()
    documents = [d for d in args.documents.split(",") if d]
    if not documents or set(documents) - set(fuzzing.DOCUMENTS):
        ap.error(f"--documents: one or more of {', '.join(fuzzing.DOCUMENTS)}")

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=HypothesisDeprecationWarning)  # schemathesis's own strategies

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tunery-fuzz-")))
        settings = {
            "base_models": {TINY: str(tiny_model())},
            "demo_model": False,
            "model_cache_dir": tmp / "cache",
            **fuzzing.SERVER_SETTINGS,
        }
        if args.postgresql:
            from tests.metadata_stores import POSTGRES_ADMIN_URL, postgres_database
            from tunery.db import Database

            url = stack.enter_context(postgres_database(POSTGRES_ADMIN_URL))
            db = Database(url)
            db.upgrade()
            db.engine.dispose()
            settings["database_url"] = url
        server = fuzzing.authorised(start_server(tmp / "data", **settings))
        stack.callback(server.stop)

        tally = fuzzing.Tally()
        started = time.monotonic()
        deadline = started + args.seconds
        store = "PostgreSQL" if args.postgresql else "SQLite"
        print(f"fuzzing {', '.join(documents)} for {args.seconds:.0f} s ({store}, {args.examples} examples)")
        fuzzers = {d: fuzzing.fuzzer(d, server.base_url, tally) for d in documents}
        rounds = 0
        while time.monotonic() < deadline and (not args.rounds or rounds < args.rounds):
            for document, fz in fuzzers.items():
                if time.monotonic() >= deadline:
                    break
                seed = args.seed + rounds
                before = sum(tally.requests.values())
                finished = fz.run(args.examples, seed, fuzzing.seed_objects(server), deadline=deadline, only=args.only)
                sent = sum(tally.requests.values()) - before
                print(
                    f"  round {rounds + 1} {document} (seed {seed}): {sent} requests, "
                    f"{'done' if finished else 'cut at the deadline'}, {time.monotonic() - started:.0f} s, "
                    f"{len(tally.failures)} failure(s) so far",
                    file=sys.stderr,
                    flush=True,
                )
            rounds += 1
        print(tally.report())
        print(f"{rounds} round(s) in {time.monotonic() - started:.0f} s")
        return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
