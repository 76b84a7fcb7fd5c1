"""Resume states of a run: what the trainer needs to continue where it stopped, in the object store.

A resume state is HF Trainer's checkpoint folder (adapter weights, optimizer, LR scheduler, RNG states,
``trainer_state.json``) under ``{output_prefix}/resume/step-{N}/``, followed by a completion marker
``tunery_state.json`` written LAST. The marker lists every file with its size and SHA-256 and carries the
per-step metrics so far. A state without its marker (the trainer died while uploading it), or whose files do not
match the marker, is never used: the next older complete one is.

Shared by the trainer (writes and reads states) and the scheduler (which says in an event where a run will
resume), so it imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.storage import ObjectNotFound, ObjectStore

log = logging.getLogger("tunery.resume")

STATE_MARKER = "tunery_state.json"
STATE_FORMAT = "tunery.resume.v1"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def resume_root(output_prefix: str) -> str:
    return f"{output_prefix.rstrip('/')}/resume"


def state_prefix(output_prefix: str, step: int) -> str:
    return f"{resume_root(output_prefix)}/step-{step}"


@dataclass
class ResumeState:
    step: int
    prefix: str
    marker: dict[str, Any]


def _steps_with_marker(store: ObjectStore, output_prefix: str) -> list[int]:
    root = resume_root(output_prefix) + "/"
    steps = set()
    for key in store.list(root):
        parts = key[len(root) :].split("/")
        if len(parts) == 2 and parts[1] == STATE_MARKER:
            m = _STEP_DIR.match(parts[0])
            if m:
                steps.add(int(m.group(1)))
    return sorted(steps, reverse=True)


def read_marker(store: ObjectStore, prefix: str) -> dict[str, Any] | None:
    """The completion marker of a state, or None when it is missing or not a marker of ours."""
    try:
        marker = json.loads(store.get_bytes(f"{prefix}/{STATE_MARKER}"))
    except (ObjectNotFound, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != STATE_FORMAT:
        return None
    if not isinstance(marker.get("files"), dict):
        return None
    return marker


def complete_states(store: ObjectStore, output_prefix: str) -> list[ResumeState]:
    """Complete states (marker present, every listed file present with its size), newest first."""
    out = []
    for step in _steps_with_marker(store, output_prefix):
        prefix = state_prefix(output_prefix, step)
        marker = read_marker(store, prefix)
        if marker is None:
            continue
        try:
            sizes_ok = all(store.size(f"{prefix}/{rel}") == int(meta["bytes"]) for rel, meta in marker["files"].items())
        except (ObjectNotFound, KeyError, TypeError, ValueError):
            sizes_ok = False
        if not sizes_ok:
            log.warning("resume state %s does not match its marker: skipped", prefix)
            continue
        out.append(ResumeState(step=step, prefix=prefix, marker=marker))
    return out


def latest_state(store: ObjectStore, output_prefix: str) -> ResumeState | None:
    """The newest complete resume state of a run, or None (then a run starts from scratch)."""
    states = complete_states(store, output_prefix)
    return states[0] if states else None


def prune_states(store: ObjectStore, output_prefix: str, keep: int) -> int:
    """Delete all but the newest ``keep`` complete states, and incomplete ones older than the newest complete one
    (each state holds the optimizer, about twice the adapter); ``keep=0`` deletes every state. The marker goes
    first, so a state being deleted is never used. Returns how many states were deleted."""
    complete = complete_states(store, output_prefix)
    kept = {s.step for s in complete[:keep]}
    newest = complete[0].step if complete else None
    root = resume_root(output_prefix) + "/"
    steps = set()
    for key in store.list(root):
        m = _STEP_DIR.match(key[len(root) :].split("/")[0])
        if m:
            steps.add(int(m.group(1)))
    deleted = 0
    for step in sorted(steps):
        if step in kept or (keep > 0 and (newest is None or step > newest)):
            continue  # kept, or newer than every complete state: possibly still being written
        prefix = state_prefix(output_prefix, step)
        store.delete(f"{prefix}/{STATE_MARKER}")
        store.delete_prefix(prefix + "/")
        deleted += 1
    return deleted


def file_entry(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def upload_state(store: ObjectStore, prefix: str, folder: Path, marker: dict[str, Any]) -> dict[str, Any]:
    """Upload a local state folder, then its marker (last). Returns the marker as written."""
    files: dict[str, Any] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        files[rel] = file_entry(path)
        store.put_file(f"{prefix}/{rel}", path)
    marker = {**marker, "format": STATE_FORMAT, "files": files}
    store.put_bytes(f"{prefix}/{STATE_MARKER}", (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode())
    return marker


class StateMismatch(Exception):
    """A downloaded state does not match its marker."""


def download_state(store: ObjectStore, state: ResumeState, folder: Path) -> None:
    """Download a state's files into ``folder``, checking each one's SHA-256 against the marker."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel, meta in state.marker["files"].items():
        if rel.startswith("/") or ".." in rel.split("/"):
            raise StateMismatch(f"{state.prefix}: bad file name {rel!r} in the marker")
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            store.get_file(f"{state.prefix}/{rel}", dest)
        except ObjectNotFound as e:
            raise StateMismatch(f"{state.prefix}/{rel} is missing") from e
        if file_entry(dest)["sha256"] != meta.get("sha256"):
            raise StateMismatch(f"{state.prefix}/{rel} does not match the SHA-256 in its marker")
