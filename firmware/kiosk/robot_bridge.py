#!/usr/bin/env python3
"""Robot bridge: JSON lines on stdin -> the local model -> JSON lines on stdout.

Any robot process (ROS node, a C++ controller through a pipe, a shell script) can talk to the
model without HTTP. One request per line, answered in order:

    in:  {"id": 7, "messages": [{"role": "user", "content": "Which way is the dock?"}], "max_tokens": 64}
    in:  {"id": 8, "prompt": "Battery low. Next action:", "stream": true, "temperature": 0}
    out: {"id": 7, "text": "...", "done": true}
    out: {"id": 8, "delta": "Return"} ... {"id": 8, "text": "Return to dock.", "done": true}
    out: {"id": 9, "error": "model 'x' is not served here ...", "code": "model_not_found", "done": true}

With "tools" (OpenAI function tools, optionally "tool_choice"), the answer line also carries the
calls as data, arguments decoded, and why the reply ended: {"id": 7, "text": null, "tool_calls":
[{"id": "call_...", "name": "drive", "arguments": {"x": 0.4}}], "finish_reason": "tool_calls",
"done": true}. "finish_reason": "length" means max_tokens cut the reply (a call cut short is never
returned). Such requests are answered whole (no "delta" lines). The robot runs the calls and sends
the results back as "tool" messages.

A bad line gets an error line and the bridge goes on; EOF ends it (exit 0). Requests are passed
through firmware.client, so a restarting service (503, refused connection) is retried.

    python robot_bridge.py --url unix:///run/edge/edge.sock < requests.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys

from edge.errors import EdgeError
from firmware.client import Client

PASSED = ("max_tokens", "temperature", "top_p", "stop", "seed", "model", "tool_choice", "parallel_tool_calls")


def handle(client: Client, request: dict, emit) -> None:
    rid = request.get("id")
    params = {k: request[k] for k in PASSED if k in request}
    if request.get("tools") and "messages" in request:
        reply = client.chat_reply(request["messages"], tools=request["tools"], **params)
        calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls]
        emit(
            {"id": rid, "text": reply.content, "tool_calls": calls, "finish_reason": reply.finish_reason, "done": True}
        )
        return
    if "messages" in request:
        call = lambda **kw: client.chat(request["messages"], **params, **kw)  # noqa: E731
    elif isinstance(request.get("prompt"), str):
        call = lambda **kw: client.generate(request["prompt"], **params, **kw)  # noqa: E731
    else:
        raise EdgeError('a request needs "messages" (a chat) or "prompt" (a string)')
    if request.get("stream"):
        pieces = []
        for piece in call(stream=True):
            pieces.append(piece)
            emit({"id": rid, "delta": piece})
        text = "".join(pieces)
    else:
        whole = call()
        assert isinstance(whole, str)  # without stream=True the client returns the whole text
        text = whole
    emit({"id": rid, "text": text, "done": True})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="JSON lines over stdin/stdout to the local edge model")
    ap.add_argument("--url", default="unix:///run/edge/edge.sock", help="edge server: unix:///path or http://host:port")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds without progress before a request fails")
    args = ap.parse_args(argv)
    client = Client(args.url, timeout=args.timeout)

    def emit(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        if not line.strip():
            continue
        rid = None
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise EdgeError("each line must be a JSON object")
            rid = request.get("id")
            handle(client, request, emit)
        except json.JSONDecodeError as e:
            emit({"id": None, "error": f"not JSON: {e}", "code": "bad_json", "done": True})
        except EdgeError as e:
            emit({"id": rid, "error": e.message, "code": e.code, "done": True})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
