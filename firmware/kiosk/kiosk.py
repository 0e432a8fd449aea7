#!/usr/bin/env python3
"""Kiosk launcher: wait for the local edge service, then run a full-screen question/answer loop.

For a kiosk PC that autologins on a console (e.g. getty@tty1 with `ExecStart=-/usr/bin/python3
/opt/edge/firmware/kiosk/kiosk.py`): it shows "starting..." until the model is ready (the service
may still be loading after a night-time reboot), streams each answer as it is generated, keeps a
short conversation, and forgets it after --idle seconds without a question (the next visitor
starts fresh). If the service restarts mid-answer, the visitor sees a short apology, not a crash.

    python kiosk.py --url unix:///run/edge/edge.sock --greeting "Ask me about the museum!"
"""

from __future__ import annotations

import argparse
import sys
import time

from edge.errors import EdgeError
from firmware.client import Client

SYSTEM = "You are a friendly help desk assistant. Answer in one or two short sentences."
MAX_TURNS = 4  # earlier questions are dropped: the context of a small model is short


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="terminal kiosk over the local edge model")
    ap.add_argument("--url", default="unix:///run/edge/edge.sock", help="edge server: unix:///path or http://host:port")
    ap.add_argument("--greeting", default="Hello! Type a question and press Enter.")
    ap.add_argument("--system", default=SYSTEM, help="system prompt")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--idle", type=float, default=120.0, help="seconds of silence before the conversation resets")
    ap.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the service at start")
    args = ap.parse_args(argv)
    out = sys.stdout
    client = Client(args.url, timeout=120.0)

    out.write("starting...\n")
    out.flush()
    client.wait_ready(timeout=args.ready_timeout)
    out.write(args.greeting + "\n> ")
    out.flush()
    history: list[dict] = []
    last = time.monotonic()
    for line in sys.stdin:
        question = line.strip()
        if not question:
            out.write("> ")
            out.flush()
            continue
        if time.monotonic() - last > args.idle:
            history = []
        last = time.monotonic()
        history.append({"role": "user", "content": question})
        messages = [{"role": "system", "content": args.system}] + history[-(2 * MAX_TURNS - 1) :]
        answer = []
        try:
            for piece in client.chat(messages, max_tokens=args.max_tokens, temperature=0, stream=True):
                answer.append(piece)
                out.write(piece)
                out.flush()
        except EdgeError:
            out.write("\nSorry, I need a moment. Please ask again.")
            history.pop()
        else:
            history.append({"role": "assistant", "content": "".join(answer)})
        out.write("\n> ")
        out.flush()
    out.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
