"""Benchmark: time to a complete tool call, `edge serve` against `llama-server --jinja`.

    python bench/tools.py [--quick] [--rounds N] [--own-template] [--json]

The same request to both servers, one after the other in an order that rotates each round, on the
same SmolLM2 Q4_1 weights with 2 threads, over HTTP on loopback: /v1/chat/completions with a 5-tool
set, tool_choice "required", parallel_tool_calls false, temperature 0, non-streamed. Measured:
client wall time from sending the request to having the whole reply (a complete call), after one
warm-up request per server process; the first request (grammar and prompt both cold) is reported
apart. Each reply is checked: a call of a known tool whose arguments parse as JSON (llama-server's
calls are counted even when they do not validate, ours must validate; both are reported).
Goal: ours/llama-server <= 1.0 on the median.

SmolLM2's own template has no tools, and llama-server's template analysis then drops `tools`
altogether (no tools in the prompt, no grammar, plain text back), so there would be no call to
time. Both servers therefore serve a copy of the file whose chat template is Qwen 2.5's (ChatML
like SmolLM2's, with tools: the `<tool_call>` format), written once with gguf's
gguf_new_metadata; `--own-template` keeps SmolLM2's (ours answers in the generic format).

With that template llama-server's grammar lets free text come before the first `<tool_call>`
(`root ::= ... until-N? tool-calls` in its log, with `required` and with a named function alike),
and SmolLM2 writes prose until max_tokens: no call to time either. `--like-for-like` therefore
times the same constrained work on both sides instead: SmolLM2's own template on both servers,
ours with `tools` and `tool_choice: required` (its generic format: a system message describing the
tools, a JSON reply constrained from the first token), llama-server with the very system message
ours renders and a `response_format` JSON schema of the same calls (its grammar also applies from
the first token). Same model, same prompt text, same constraint; the reply must hold a call of a
known tool on both sides.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the firmware example's tools, the templates
import common
import httpx
import servers
from common import Row, console, median

from firmware.kiosk import robot_tools

ANCHOR = "llama-server --jinja"
CTX = 2048
REQUESTS_PER_ROUND = 5
# The robot's own three functions (the firmware example's), and two more to make a 5-tool set.
TOOLS = [
    *robot_tools.TOOLS,
    {
        "type": "function",
        "function": {
            "name": "look",
            "description": "Turn the camera",
            "parameters": {
                "type": "object",
                "properties": {"pan": {"type": "integer", "minimum": -90, "maximum": 90}},
                "required": ["pan"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "dock",
            "description": "Return to the charging dock",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]
TASKS = [
    "Drive one metre forward, slowly.",
    "Open the gripper.",
    "Say hello to the visitors.",
    "Look 30 degrees to the left.",
    "Go back to the dock to charge.",
]


class LlamaServerJinja(servers.LlamaServer):
    """llama-server with its Jinja chat templates on: the mode in which it accepts `tools`."""

    def command(self, model, port, parallel, ctx):
        return [*super().command(model, port, parallel, ctx), "--jinja"]


servers.KINDS[ANCHOR] = LlamaServerJinja(ANCHOR, "/health")


def request_body(run: servers.Running, task: str) -> dict:
    if run.kind.name == SCHEMA_ANCHOR:
        return schema_body(run, task)
    return {
        "model": run.model_id,
        "messages": [{"role": "user", "content": task}],
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": 128,
    }


def one_call(http: httpx.Client, run: servers.Running, task: str) -> tuple[float, bool, int]:
    """(wall seconds to the whole reply, a complete call came back, completion tokens)."""
    t0 = time.perf_counter()
    r = http.post(run.url("/v1/chat/completions"), json=request_body(run, task))
    wall = time.perf_counter() - t0
    r.raise_for_status()
    body = r.json()
    message = body["choices"][0]["message"]
    calls = message.get("tool_calls") or []
    if run.kind.name == SCHEMA_ANCHOR:  # the call is the JSON reply itself
        calls = _schema_calls(message.get("content") or "")
    names = {t["function"]["name"] for t in TOOLS}
    ok = bool(calls) and all(c["function"]["name"] in names and _is_json(c["function"]["arguments"]) for c in calls)
    return wall, ok, body.get("usage", {}).get("completion_tokens", 0)


def _is_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (TypeError, json.JSONDecodeError):
        return False


SCHEMA_ANCHOR = "llama-server json_schema"


class LlamaServerSchema(servers.LlamaServer):
    """llama-server with its own template, asked for the calls through a JSON schema (--like-for-like)."""


servers.KINDS[SCHEMA_ANCHOR] = LlamaServerSchema(SCHEMA_ANCHOR, "/health")


def schema_body(run: servers.Running, task: str) -> dict:
    """What ours does for `tool_choice: required` on a template without tools, spelled for llama-server:
    ours's generic system message and a JSON schema of {"tool_calls": [one call of a known tool]}."""
    from edge.chat.toolformats import Generic
    from edge.chat.tools import parse_tools

    fmt, tools = Generic(), parse_tools(TOOLS)
    calls = {"anyOf": [fmt.call_schema(t) for t in tools]}
    schema = {
        "type": "object",
        "properties": {"tool_calls": {"type": "array", "items": calls, "minItems": 1, "maxItems": 1}},
        "required": ["tool_calls"],
    }
    return {
        "model": run.model_id,
        "messages": [{"role": "system", "content": fmt.system_prompt(tools, True)}, {"role": "user", "content": task}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "calls", "schema": schema}},
        "temperature": 0,
        "max_tokens": 128,
    }


def _schema_calls(text: str) -> list[dict]:
    """The calls in a generic-format JSON reply, shaped as OpenAI tool calls (arguments as a JSON string)."""
    try:
        raw = json.loads(text).get("tool_calls")
    except (AttributeError, json.JSONDecodeError):
        return []
    if not isinstance(raw, list):
        return []
    return [
        {"function": {"name": c.get("name"), "arguments": json.dumps(c.get("arguments"))}}
        for c in raw
        if isinstance(c, dict)
    ]


REPO = Path(__file__).resolve().parent.parent
QWEN_TEMPLATE = "Qwen-Qwen2.5-7B-Instruct.jinja"


def with_tool_template(model: Path) -> Path:
    """A copy of `model` whose chat template is Qwen 2.5's (from the llama-cpp-python sdist), made once."""
    from tests.support.templates import template_dir

    out = common.work_dir() / "tools" / f"{model.stem}.qwen25-template.gguf"
    if out.is_file():
        return out
    folder, why = template_dir()
    if folder is None:
        raise SystemExit(f"the sdist's chat templates are not available ({why}); run with --own-template")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    cmd = [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(model), str(tmp)]
    subprocess.run([*cmd, "--chat-template-file", str(folder / QWEN_TEMPLATE), "--force"], check=True)
    tmp.replace(out)
    return out


def server_round(kind: str, model: Path, fig: dict, n_requests: int) -> None:
    env = {"PYTHONPATH": str(REPO)} if kind == "ours" else None  # `edge serve` from this tree
    run = servers.start(kind, model, parallel=1, ctx=CTX, env=env)
    try:
        with httpx.Client(timeout=300) as http:
            first, ok, _ = one_call(http, run, TASKS[0])
            fig.setdefault(("first call", kind), []).append(first)
            for i in range(n_requests):
                wall, ok, n = one_call(http, run, TASKS[i % len(TASKS)])
                fig.setdefault(("call", kind), []).append(wall)
                fig.setdefault(("complete", kind), []).append(1.0 if ok else 0.0)
                fig.setdefault(("tokens", kind), []).append(n)
                fig.setdefault(("per token", kind), []).append(1000 * wall / max(n, 1))
        console.log(
            f"  {kind:22s} first {first:.2f} s, median {median(fig[('call', kind)][-n_requests:]):.2f} s, "
            f"complete calls {sum(fig[('complete', kind)][-n_requests:]):.0f}/{n_requests}"
        )
    finally:
        common.stop(run.proc)


def rows(fig: dict, anchor: str) -> list[Row]:
    def med(measure: str, kind: str) -> float | None:
        xs = fig.get((measure, kind))
        return median(xs) if xs else None

    return [
        Row("time to a complete call", "s", med("call", "ours"), {anchor: med("call", anchor)}, goal="<= 1.0x"),
        Row("first call in a fresh server", "s", med("first call", "ours"), {anchor: med("first call", anchor)}),
        Row("replies with a complete call", "share", med("complete", "ours"), {anchor: med("complete", anchor)}),
        Row("completion tokens per call", "tokens", med("tokens", "ours"), {anchor: med("tokens", anchor)}),
        Row("wall time per completion token", "ms", med("per token", "ours"), {anchor: med("per token", anchor)}),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round, 3 requests per server")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per server (default 3, quick 1)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    ap.add_argument("--own-template", action="store_true", help="SmolLM2's own template (llama-server ignores tools)")
    ap.add_argument(
        "--like-for-like",
        action="store_true",
        help="own template on both; llama-server gets ours's system message and a JSON schema of the calls",
    )
    args = ap.parse_args(argv)
    anchor = SCHEMA_ANCHOR if args.like_for_like else ANCHOR
    common.exit_cleanly_on_sigterm()
    rounds = args.rounds or (1 if args.quick else 3)
    n_requests = 3 if args.quick else REQUESTS_PER_ROUND
    kinds = [k for k in ("ours", anchor) if k == "ours" or common.anchor_binary("llama-server", required=False)]
    if anchor not in kinds:
        console.log("[yellow]llama-server is not built (python bench/anchors.py): measuring ours alone[/]")
    model = common.bundled_model("smollm2")
    model = model if args.own_template or args.like_for_like else with_tool_template(model)
    load = [common.warn_if_busy()]
    fig: dict = {}
    console.rule(f"SmolLM2-135M Q4_1: a 5-tool request, tool_choice required ({rounds} rounds)")
    for r in range(rounds):
        for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
            server_round(kind, model, fig, n_requests)
    load.append(common.warn_if_busy())
    table = rows(fig, anchor)
    anchors = [anchor] if anchor in kinds else []
    if args.json:
        samples = {f"{m} | {k}": v for (m, k), v in fig.items()}
        print(common.rows_json(table, anchors, {"samples": samples, "rounds": rounds, "load_average": load}))
    else:
        common.print_table(f"tool calls: edge serve vs {anchor} (ours/anchor, client wall time)", table, anchors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
