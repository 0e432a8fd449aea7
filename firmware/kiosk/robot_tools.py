#!/usr/bin/env python3
"""A robot that the model drives through three functions: drive, grip and say.

The loop: send the conversation with the tools; run every call the model makes (here: print and
record it; on a robot, the motor and speaker code); send the results back as `tool` messages; repeat
until the model answers in words. After `max_rounds` rounds of calls the model is asked to answer
(tool_choice "none"), so the loop always ends.

    python robot_tools.py --url unix:///run/edge/edge.sock "Pick up the red cup and bring it to the door."
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from firmware.client import Client, Reply

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "drive",
            "description": "Drive the robot by x and y metres (positive x: forward, positive y: left)",
            "parameters": {
                "type": "object",
                "properties": {
                    "x": {"type": "number", "description": "metres forward"},
                    "y": {"type": "number", "description": "metres left"},
                    "speed": {"type": "string", "enum": ["slow", "normal", "fast"]},
                },
                "required": ["x", "y"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "grip",
            "description": "Open or close the gripper",
            "parameters": {
                "type": "object",
                "properties": {"action": {"type": "string", "enum": ["open", "close"]}},
                "required": ["action"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "say",
            "description": "Say a short sentence through the speaker",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string", "maxLength": 80}},
                "required": ["text"],
            },
        },
    },
]


class Robot:
    """Stands in for the hardware: records what it was told to do and answers like the real one."""

    def __init__(self):
        self.log: list[tuple[str, dict]] = []

    def drive(self, x: float, y: float, speed: str = "normal") -> str:
        self.log.append(("drive", {"x": x, "y": y, "speed": speed}))
        return f"moved {x:+.2f} m forward, {y:+.2f} m left ({speed})"

    def grip(self, action: str) -> str:
        self.log.append(("grip", {"action": action}))
        return f"gripper {action}ed" if action == "open" else "gripper closed"

    def say(self, text: str) -> str:
        self.log.append(("say", {"text": text}))
        return "said"

    def functions(self) -> dict[str, Callable[..., str]]:
        return {"drive": self.drive, "grip": self.grip, "say": self.say}


def run(client: Client, task: str, robot: Robot, *, max_rounds: int = 3, **params) -> tuple[str, list[dict]]:
    """Run the call -> result loop for `task`; returns the model's final words and the conversation."""
    messages: list[dict] = [
        {"role": "system", "content": "You control a robot with the functions drive, grip and say."},
        {"role": "user", "content": task},
    ]
    functions = robot.functions()
    for _ in range(max_rounds):
        reply: Reply = client.chat_reply(messages, tools=TOOLS, **params)
        if not reply.tool_calls:
            return reply.content or "", messages
        messages.append(reply.as_message())
        for call in reply.tool_calls:
            result = functions[call.name](**call.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    final = client.chat_reply(messages, tools=TOOLS, **{**params, "tool_choice": "none"})
    return final.content or "", messages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="let the local model drive a (simulated) robot with tool calls")
    ap.add_argument("task", help='what the robot should do, e.g. "bring the cup to the door"')
    ap.add_argument("--url", default="unix:///run/edge/edge.sock", help="edge server: unix:///path or http://host:port")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of calls before the model must answer")
    args = ap.parse_args(argv)
    robot = Robot()
    answer, _ = run(Client(args.url), args.task, robot, max_rounds=args.rounds, temperature=0, max_tokens=160)
    for name, arguments in robot.log:
        print(f"{name}({json.dumps(arguments, ensure_ascii=False)})")
    print(answer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
