"""Change the prompt on a schedule and print the changes as the stream applies them.

Why: a game drives the scene from its own timeline (a day/night cycle, a cutscene, a level
change). This shows the two halves of that: requests on the control socket, and confirmation
on the stream, where an ``applied`` event says at which block a ``state_id`` took effect (each
frame header carries its ``state`` too, so a game knows exactly when the new look is on screen).

    sfbridge serve --model testsrc &
    python examples/prompt_schedule.py    # endpoints: --control/--frames, else $SFBRIDGE_CONTROL/_FRAMES
"""

from __future__ import annotations

import argparse
import sys
import time

import zmq

from sfbridge import Client, DaemonUnavailable, RequestError
from sfbridge.protocol import DEFAULT_CONTROL, DEFAULT_FRAMES, EVENT_TOPIC, unpack

# (seconds after start, prompt, transition)
SCHEDULE: list[tuple[float, str, str]] = [
    (0.0, "a calm lake at dawn, mist over the water", "cut"),
    (4.0, "the same lake at noon, bright sun, boats", "blend"),
    (8.0, "a thunderstorm over the lake at night, lightning", "blend"),
    (12.0, "a frozen lake under the northern lights", "cut"),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--control", default=None, help=f"control endpoint [$SFBRIDGE_CONTROL or {DEFAULT_CONTROL}]")
    p.add_argument("--frames", default=None, help=f"frames endpoint [$SFBRIDGE_FRAMES or {DEFAULT_FRAMES}]")
    p.add_argument("--seconds", type=float, default=None, help="stop after N s (default: schedule end + 4 s)")
    p.add_argument("--speed", type=float, default=1.0, help="play the schedule this many times faster")
    p.add_argument("--blend-blocks", type=int, default=4, help="length of each blend in blocks [%(default)s]")
    p.add_argument("--headless", action="store_true", help="accepted for symmetry; this example has no window")
    a = p.parse_args(argv)

    duration = a.seconds if a.seconds is not None else SCHEDULE[-1][0] / a.speed + 4.0
    try:
        client = Client(control=a.control, frames=a.frames, timeout=2.0, retries=1)  # None: SFBRIDGE_* or default
        client.ping()
    except ValueError as exc:  # a malformed endpoint
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DaemonUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3

    # Events only: subscribing to no frame format means the daemon encodes nothing for us.
    events = zmq.Context.instance().socket(zmq.SUB)
    events.setsockopt(zmq.LINGER, 0)
    events.setsockopt(zmq.SUBSCRIBE, EVENT_TOPIC.encode())
    events.connect(client.frames_endpoint)
    time.sleep(0.2)  # let the subscription reach the daemon so the first `applied` is not missed

    pending = list(SCHEDULE)
    sent: dict[int, str] = {}  # state_id -> prompt, to recognise our own changes
    t0 = time.monotonic()
    try:
        while (now := time.monotonic() - t0) < duration:
            while pending and pending[0][0] / a.speed <= now:
                at, prompt, transition = pending.pop(0)
                try:
                    r = client.set_prompt(prompt, transition=transition, blend_blocks=a.blend_blocks)
                except RequestError as exc:
                    print(f"[{now:5.1f}s] refused: {exc}")
                    continue
                sent[r["state_id"]] = prompt
                print(f"[{now:5.1f}s] sent    state {r['state_id']} ({transition}), applies at block "
                      f"{r['applies_at_block']}: {prompt}", flush=True)
            wait = (pending[0][0] / a.speed - now) if pending else duration - now
            if events.poll(max(1, int(min(wait, duration - now) * 1000)), zmq.POLLIN):
                event = unpack(events.recv_multipart()[1])
                if event.get("type") == "applied":
                    mine = "" if event.get("state_id") in sent else " (not from this script)"
                    print(f"[{time.monotonic() - t0:5.1f}s] applied state {event.get('state_id')} at block "
                          f"{event.get('block')} ({event.get('change')}, {event.get('transition')}): "
                          f"{event.get('prompt')}{mine}", flush=True)
                elif event.get("type") in ("started", "stopping", "error"):
                    print(f"[{time.monotonic() - t0:5.1f}s] {event.get('type')}: {event}", flush=True)
    except DaemonUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        pass
    finally:
        events.close()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
