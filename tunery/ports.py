"""A free TCP port on this machine: the one way Tunery picks a port for a process it starts (a vLLM of ``tunery
serve``, the demo's server, a colocated vLLM's rendezvous in the trainer)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel hands out as free on ``host`` now (an ephemeral one, so two processes asking at once get
    different ones, unlike a fixed list of candidates tried in turn)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
