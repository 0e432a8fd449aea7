"""The firmware's tool loop (firmware/kiosk/robot_tools.py) and the robot bridge's tool pass-through,
against a live server on the bundled SmolLM2: calls arrive as data and validate, results go back,
and the loop ends with words."""

from __future__ import annotations

import io
import json

import jsonschema
import pytest

from firmware.client import Client
from firmware.kiosk import robot_bridge, robot_tools

pytestmark = pytest.mark.slow
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in robot_tools.TOOLS}


def test_robot_loop_runs_calls_until_the_model_answers(server):
    robot = robot_tools.Robot()
    client = Client(server.url, model="smollm2:135m-q4_1")
    answer, messages = robot_tools.run(
        client,
        "Say hello, then drive one metre forward.",
        robot,
        max_rounds=1,
        temperature=0,
        max_tokens=80,
        tool_choice="required",
        parallel_tool_calls=False,
    )
    assert robot.log, "the model made no call"
    for name, arguments in robot.log:
        jsonschema.validate({k: v for k, v in arguments.items() if k != "speed" or v != "normal"}, SCHEMAS[name])
    results = [m for m in messages if m["role"] == "tool"]
    calls = [c for m in messages if m.get("tool_calls") for c in m["tool_calls"]]
    assert [r["tool_call_id"] for r in results] == [c["id"] for c in calls]
    assert isinstance(answer, str) and answer.strip()


def test_bridge_passes_tools_and_returns_calls_as_data(server):
    out = io.StringIO()
    request = {
        "id": 5,
        "messages": [{"role": "user", "content": "Open the gripper."}],
        "tools": robot_tools.TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "grip"}},
        "temperature": 0,
        "max_tokens": 160,
        "model": "smollm2:135m-q4_1",
    }
    robot_bridge.handle(Client(server.url), request, lambda obj: out.write(json.dumps(obj) + "\n"))
    (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
    assert line["id"] == 5 and line["done"] and line["finish_reason"] == "tool_calls", line
    (call,) = line["tool_calls"]  # a named function: exactly one call
    assert call["name"] == "grip" and call["id"]
    jsonschema.validate(call["arguments"], SCHEMAS["grip"])
