"""Ids in OpenAI's formats (tunery/ids.py): their shape, and letters drawn uniformly from the system's randomness."""

from __future__ import annotations

import re
from collections import Counter

from tunery import ids


def test_ids_have_openai_s_shapes() -> None:
    shapes = {
        ids.file_id: r"file-[A-Za-z0-9]{24}",
        ids.upload_id: r"upload_[A-Za-z0-9]{24}",
        ids.job_id: r"ftjob-[A-Za-z0-9]{24}",
        ids.event_id: r"ft-event-[A-Za-z0-9]{24}",
        ids.checkpoint_id: r"ftckpt_[A-Za-z0-9]{24}",
    }
    for make, shape in shapes.items():
        made = {make() for _ in range(500)}
        assert len(made) == 500
        assert all(re.fullmatch(shape, i) for i in made), shape


def test_each_letter_is_as_likely_as_any_other() -> None:
    """62 letters and digits, each about 1/62 of 240,000 draws: a bias toward the first letters (the remainder of
    256 bytes over 62) would put them near 5/256 instead of 4/256, outside these bounds."""
    counts = Counter("".join(ids._random(24) for _ in range(10_000)))
    assert len(counts) == 62
    expected = 240_000 / 62
    assert all(abs(n - expected) < 0.08 * expected for n in counts.values()), counts.most_common(3)


def test_request_ids_have_openai_s_shape_and_do_not_repeat_when_the_global_generator_is_seeded() -> None:
    """Request ids come from a generator of their own (not a system call each): a library seeding Python's global
    one (a chat request's ``seed``) must not make two requests share an id."""
    import random

    random.seed(7)
    first = [ids.request_id() for _ in range(3)]
    random.seed(7)
    again = [ids.request_id() for _ in range(3)]
    assert len(set(first + again)) == 6
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", i) for i in first + again)
