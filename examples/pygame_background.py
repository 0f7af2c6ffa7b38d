"""A tiny game with the live stream as its background: move the square, steer the world.

Arrow keys (or WASD) move the player, who cannot walk through the grey obstacles; number keys
1-5 change the prompt (Shift+number: blend instead of cut); Esc quits.

Why it is written this way: a game loop must never wait for the network. One thread keeps
only the newest frame (``Client.subscribe(latest_only=True)`` drains the socket), another sends
prompt requests (a request can wait seconds if the daemon is gone), and the game loop just
takes whatever frame is newest at each tick.

    sfbridge serve --model testsrc &
    python examples/pygame_background.py
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time

from game_common import LatestFrame, arrow_keys, set_sdl_env

from sfbridge.client import Client, DaemonUnavailable, RequestError
from sfbridge.protocol import DEFAULT_CONTROL, DEFAULT_FRAMES

PROMPTS = [
    "a sunny meadow with wildflowers, seen from above",
    "a dark dungeon floor with glowing runes",
    "a sandy beach with waves washing in",
    "a snowy forest clearing at night",
    "a neon city street in the rain, top-down",
]


class PromptSender(threading.Thread):
    """Sends prompt changes off the game thread, with its own Client (clients are per thread)."""

    def __init__(self, control: str) -> None:
        super().__init__(daemon=True)
        self.control = control
        self.jobs: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.last = ""

    def run(self) -> None:
        with Client(control=self.control, timeout=2.0, retries=1) as client:
            while True:
                text, transition = self.jobs.get()
                try:
                    r = client.set_prompt(text, transition=transition)
                    self.last = f"state {r['state_id']} at block {r['applies_at_block']}: {text}"
                except (RequestError, DaemonUnavailable) as exc:
                    self.last = f"prompt failed: {exc}"
                print(self.last, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--control", default=None, help=f"control endpoint [$SFBRIDGE_CONTROL or {DEFAULT_CONTROL}]")
    p.add_argument("--frames", default=None, help=f"frames endpoint [$SFBRIDGE_FRAMES or {DEFAULT_FRAMES}]")
    p.add_argument("--format", choices=("jpeg", "rgb24"), default="jpeg")
    p.add_argument("--size", default="832x480", help="window size WxH")
    p.add_argument("--seconds", type=float, default=None, help="quit after N s")
    p.add_argument("--headless", action="store_true",
                   help="no window (SDL dummy driver); the player walks by itself and a prompt is sent")
    a = p.parse_args(argv)
    set_sdl_env(a.headless)

    try:
        with Client(control=a.control, timeout=2.0, retries=1) as probe:
            probe.ping()
    except DaemonUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:  # a malformed endpoint (argument or SFBRIDGE_*)
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import pygame

    width, height = (int(v) for v in a.size.lower().split("x"))
    receiver = LatestFrame(Client(control=a.control, frames=a.frames), a.format)
    sender = PromptSender(a.control)
    receiver.start()
    sender.start()

    pygame.display.init()
    pygame.font.init()
    screen = pygame.display.set_mode((width, height), pygame.RESIZABLE)
    pygame.display.set_caption("sfbridge: live background")
    font = pygame.font.Font(None, 22)
    clock = pygame.time.Clock()

    player = pygame.Rect(width // 2 - 16, height // 2 - 16, 32, 32)
    obstacles = [pygame.Rect(int(fx * width), int(fy * height), int(fw * width), int(fh * height))
                 for fx, fy, fw, fh in ((0.15, 0.2, 0.1, 0.35), (0.6, 0.15, 0.25, 0.08),
                                        (0.4, 0.7, 0.3, 0.08), (0.8, 0.45, 0.06, 0.3))]
    background = None
    shown = 0
    speed = 240.0  # pixels per second
    t0 = time.monotonic()
    auto_dir = (1, 1)
    auto_prompt_sent = False

    running = True
    while running:
        dt = clock.tick(60) / 1000.0
        if a.seconds is not None and time.monotonic() - t0 >= a.seconds:
            break
        for ev in pygame.event.get():
            if ev.type == pygame.QUIT or (ev.type == pygame.KEYDOWN and ev.key == pygame.K_ESCAPE):
                running = False
            elif ev.type == pygame.KEYDOWN and pygame.K_1 <= ev.key < pygame.K_1 + len(PROMPTS):
                blend = bool(ev.mod & pygame.KMOD_SHIFT)
                sender.jobs.put((PROMPTS[ev.key - pygame.K_1], "blend" if blend else "cut"))

        dx, dy = arrow_keys(pygame)
        if a.headless:
            dx, dy = auto_dir
            if shown and not auto_prompt_sent:  # exercise the number-key path like a player would
                pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_2, mod=0, unicode="2",
                                                     scancode=0))
                auto_prompt_sent = True
        view = screen.get_rect()
        for axis, delta in ((0, dx), (1, dy)):  # move one axis at a time so the player slides along walls
            step = [0, 0]
            step[axis] = round(delta * speed * dt)
            moved = player.move(*step).clamp(view)
            if moved.collidelist(obstacles) == -1:
                player = moved
            elif a.headless:
                auto_dir = (-auto_dir[0], auto_dir[1]) if axis == 0 else (auto_dir[0], -auto_dir[1])

        frame = receiver.take()
        if frame is not None:
            h, w = frame.image.shape[:2]
            background = pygame.image.frombuffer(frame.image.tobytes(), (w, h), "RGB")
            shown += 1
        if background is not None:
            if background.get_size() == view.size:
                screen.blit(background, (0, 0))
            else:
                screen.blit(pygame.transform.smoothscale(background, view.size), (0, 0))
        else:
            screen.fill((10, 10, 30))
        for rect in obstacles:
            pygame.draw.rect(screen, (90, 90, 90), rect)
            pygame.draw.rect(screen, (20, 20, 20), rect, 2)
        pygame.draw.rect(screen, (255, 220, 0), player)
        pygame.draw.rect(screen, (0, 0, 0), player, 2)
        hud = f"1-{len(PROMPTS)}: prompt (Shift = blend)  arrows: move  |  {sender.last or 'press a number'}"
        # Bottom-left, above the test pattern's progress bar: the stream burns its own title into the top.
        hud_surface = font.render(hud[:120], True, (255, 255, 255), (0, 0, 0))
        screen.blit(hud_surface, (6, view.height - hud_surface.get_height() - max(14, view.height // 30)))
        pygame.display.flip()

    pygame.quit()
    print(f"frames shown: {shown}, received: {receiver.count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
