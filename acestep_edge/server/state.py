"""What every route and socket of one server shares: the queue, the task handler, access rules, limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from .auth import Access
from .jobs import Renderer
from .tasks import Tasks


@dataclass
class State:
    renderer: Renderer
    tasks: Tasks
    access: Access
    max_body_bytes: int = 64 * 2**20
    public_url: str | None = None  # the base of audioURL; None: the address the client used
    info: dict = field(default_factory=dict)  # Pipeline.info(): bundle and providers, shown by /health
    ws_grace_seconds: float = 30.0  # a sync WebSocket task outlives its socket this long, for a reconnect
