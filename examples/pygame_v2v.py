"""A tiny game whose own render is restyled live: video-to-video from the game's frames.

The game draws a simple level (floor tiles, walls, a player) into an off-screen surface at the
daemon's frame size. A sender thread ships that picture to the daemon's input socket at 16 fps;
the daemon (``input v2v``) restyles it with the prompt, and the window shows the restyled stream,
with the raw game render as a small inset. Arrow keys / WASD move the player (the level scrolls
with it, so the generated picture pans), 1-4 change the prompt, +/- change the strength, Esc quits.

Why it is written this way: the game loop never waits for the network. It only swaps the newest
render into the sender (which drops older ones) and takes the newest received frame; sockets live
on two threads, each with its own Client. ``Client.send_frame`` never blocks either: its PUB drops
frames while the daemon is slow or gone.

    sfbridge serve --model testsrc &
    python examples/pygame_v2v.py
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import numpy as np
from game_common import LatestFrame, arrow_keys, set_sdl_env

from sfbridge.client import Client, DaemonUnavailable, RequestError
from sfbridge.protocol import DEFAULT_CONTROL, DEFAULT_FRAMES, DEFAULT_INPUT

PROMPTS = [
    "a mossy stone dungeon, torchlight, top-down",
    "a frozen lake with snow drifts, top-down",
    "a neon circuit board city at night, top-down",
    "a sunny meadow with a dirt path, top-down",
]
TILE = 48


class RenderSender(threading.Thread):
    """Sends the newest game render at 16 fps (``Client.stream_frames``); older renders are skipped."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.lock = threading.Lock()
        self.render: np.ndarray | None = None
        self.sent = 0

    def offer(self, render: np.ndarray) -> None:
        with self.lock:
            self.render = render

    def _newest(self):
        while True:
            with self.lock:
                render, self.render = self.render, None
            if render is None:
                time.sleep(0.005)
                continue
            self.sent += 1
            yield render

    def run(self) -> None:
        self.client.stream_frames(self._newest(), fps=16)


def request_async(control: str | None, call) -> None:
    """Runs ``call(client)`` on a throwaway thread and Client: a request may wait seconds for a dead daemon."""
    def run() -> None:
        with Client(control=control, timeout=2.0, retries=1) as c:
            try:
                call(c)
            except (RequestError, DaemonUnavailable) as exc:
                print(f"request failed: {exc}", file=sys.stderr)

    threading.Thread(target=run, daemon=True).start()


def draw_level(pygame, surface, camera: tuple[float, float], player_screen: tuple[int, int]) -> None:
    """Checkerboard floor with walls every few tiles, scrolled by ``camera``; the player in the middle."""
    w, h = surface.get_size()
    cx, cy = camera
    x0, y0 = int(cx // TILE) - 1, int(cy // TILE) - 1
    for ty in range(y0, y0 + h // TILE + 3):
        for tx in range(x0, x0 + w // TILE + 3):
            wall = (tx % 7 == 0 and ty % 3 != 1) or (ty % 6 == 0 and tx % 4 != 2)
            colour = (70, 70, 80) if wall else ((150, 120, 80) if (tx + ty) % 2 else (130, 100, 70))
            pygame.draw.rect(surface, colour, (tx * TILE - cx, ty * TILE - cy, TILE, TILE))
    pygame.draw.circle(surface, (240, 40, 40), player_screen, TILE // 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--control", default=None, help=f"control endpoint [$SFBRIDGE_CONTROL or {DEFAULT_CONTROL}]")
    p.add_argument("--frames", default=None, help=f"frames endpoint [$SFBRIDGE_FRAMES or {DEFAULT_FRAMES}]")
    p.add_argument("--input", default=None, help=f"input endpoint [$SFBRIDGE_INPUT or {DEFAULT_INPUT}]")
    p.add_argument("--strength", type=float, default=0.6, help="v2v strength 0..1 [%(default)s]")
    p.add_argument("--seconds", type=float, default=None, help="quit after N s")
    p.add_argument("--headless", action="store_true", help="no window (SDL dummy driver); the player walks by itself")
    a = p.parse_args(argv)
    set_sdl_env(a.headless)

    try:
        control = Client(control=a.control, timeout=2.0, retries=1)
        status = control.status()
        reply = control.set_input("v2v", strength=a.strength)
        print(f"v2v on from block {reply['applies_at_block']} (strength {a.strength})", flush=True)
        sender = RenderSender(Client(control=a.control, input=a.input))
    except DaemonUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (RequestError, ValueError) as exc:  # a model without input, a bad endpoint or strength
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import pygame

    size = (int(status.get("width", 832)), int(status.get("height", 480)))
    receiver = LatestFrame(Client(control=a.control, frames=a.frames), "jpeg")
    receiver.start()
    sender.start()
    pygame.display.init()
    pygame.font.init()
    screen = pygame.display.set_mode(size)
    pygame.display.set_caption("sfbridge: the game, restyled")
    game = pygame.Surface(size)
    font = pygame.font.Font(None, 22)
    clock = pygame.time.Clock()
    camera = [0.0, 0.0]
    restyled = None
    shown = from_input = 0
    rtt_ms: list[float] = []
    strength = a.strength
    t0 = time.monotonic()
    running = True
    while running:
        dt = clock.tick(60) / 1000.0
        if a.seconds is not None and time.monotonic() - t0 >= a.seconds:
            break
        for ev in pygame.event.get():
            if ev.type == pygame.QUIT or (ev.type == pygame.KEYDOWN and ev.key == pygame.K_ESCAPE):
                running = False
            elif ev.type == pygame.KEYDOWN and pygame.K_1 <= ev.key < pygame.K_1 + len(PROMPTS):
                text = PROMPTS[ev.key - pygame.K_1]
                request_async(a.control, lambda c, text=text: c.set_prompt(text))
            elif ev.type == pygame.KEYDOWN and ev.unicode in ("+", "-"):
                strength = min(1.0, max(0.0, strength + (0.1 if ev.unicode == "+" else -0.1)))
                request_async(a.control, lambda c, s=strength: c.set_input("v2v", strength=s))
        dx, dy = arrow_keys(pygame)
        if a.headless:
            dx, dy = 1, 0.5
        camera[0] += dx * 200 * dt
        camera[1] += dy * 200 * dt

        # The game's own render, handed to the sender thread ([H, W, 3] RGB; surfarray is [W, H, 3]).
        draw_level(pygame, game, (camera[0], camera[1]), (size[0] // 2, size[1] // 2))
        sender.offer(pygame.surfarray.array3d(game).transpose(1, 0, 2).copy())

        frame = receiver.take()
        if frame is not None:
            h, w = frame.image.shape[:2]
            restyled = pygame.image.frombuffer(frame.image.tobytes(), (w, h), "RGB")
            shown += 1
            src = frame.header.get("input")
            if src and src.get("client") == sender.client.client_id:
                from_input += 1
                rtt_ms.append(1000 * (time.time() - src["t_cap"]))
        if restyled is not None:
            screen.blit(pygame.transform.smoothscale(restyled, size) if restyled.get_size() != size else restyled,
                        (0, 0))
        else:
            screen.blit(game, (0, 0))
        inset = pygame.transform.smoothscale(game, (size[0] // 4, size[1] // 4))
        screen.blit(inset, (size[0] - inset.get_width() - 8, 8))
        pygame.draw.rect(screen, (255, 255, 255), (size[0] - inset.get_width() - 8, 8, *inset.get_size()), 1)
        rtt = f"{np.median(rtt_ms[-32:]):.0f} ms" if rtt_ms else "-"
        hud = f"strength {strength:.1f} (+/-)  1-{len(PROMPTS)}: prompt  |  sent {sender.sent}  capture->shown {rtt}"
        text = font.render(hud, True, (255, 255, 255), (0, 0, 0))
        screen.blit(text, (6, size[1] - text.get_height() - 6))
        pygame.display.flip()

    try:
        control.set_input("off")
    except (DaemonUnavailable, RequestError) as exc:
        print(f"input off failed: {exc}", file=sys.stderr)
    control.close()
    pygame.quit()
    rtt = f"{np.median(rtt_ms):.0f}" if rtt_ms else "-"
    print(f"frames shown: {shown}, made from our input: {from_input}, renders sent: {sender.sent}, "
          f"median capture->shown ms: {rtt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
