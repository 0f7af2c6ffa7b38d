"""What the pygame examples share: the newest-frame receiver thread, the headless switch, the arrow keys.

Not an example to run: ``pygame_background.py`` and ``pygame_v2v.py`` import it (run as scripts, their
folder is on ``sys.path``). A game loop must never wait for the network, so the receiver lives on
its own thread with its own Client and the loop only takes whatever frame is newest.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from sfbridge.client import Client, DaemonUnavailable, Frame


class LatestFrame(threading.Thread):
    """Receiver thread: holds the newest decoded frame (and its header) for the game loop."""

    def __init__(self, client: Client, fmt: str) -> None:
        super().__init__(daemon=True)
        self.client, self.fmt = client, fmt
        self.lock = threading.Lock()
        self.frame: Frame | None = None
        self.count = 0

    def run(self) -> None:
        while True:
            try:
                for frame in self.client.subscribe(self.fmt, latest_only=True, timeout=2.0):
                    with self.lock:
                        self.frame = frame
                        self.count += 1
            except DaemonUnavailable:
                continue  # no frames for 2 s (paused or restarting): keep listening

    def take(self) -> Frame | None:
        """The newest frame since the last call, or None when none came."""
        with self.lock:
            frame, self.frame = self.frame, None
            return frame


def set_sdl_env(headless: bool) -> None:
    """Before pygame is imported: the SDL dummy drivers when headless, and no pygame banner."""
    if headless:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


def arrow_keys(pygame: Any) -> tuple[int, int]:
    """(dx, dy) in -1..1 from the arrow keys or WASD held down now."""
    keys = pygame.key.get_pressed()
    dx = (keys[pygame.K_RIGHT] or keys[pygame.K_d]) - (keys[pygame.K_LEFT] or keys[pygame.K_a])
    dy = (keys[pygame.K_DOWN] or keys[pygame.K_s]) - (keys[pygame.K_UP] or keys[pygame.K_w])
    return dx, dy
