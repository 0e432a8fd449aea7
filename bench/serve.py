"""Benchmark: `edge serve` against llama-server and llama_cpp.server, in one run.

    python bench/serve.py [--quick] [--rounds N] [--json] [--only ours,llama-server]

Same model file, 2 threads, same context per slot (2048), servers run one after the other in
an order that rotates each round, all over HTTP on loopback (/v1/completions, temperature 0):
  (a) single-client tokens/s, 128-token completions, SmolLM2 Q4_1 and Gemma-3-270M;
  (b) aggregate tokens/s, 4 concurrent clients (llama-server -np 4, ours --parallel 4);
  (c) time to first token with a ~500-token system prompt, the first time and once cached
      (three fresh system prompts per server process);
  (d) cold start: process start to first streamed token;
  (e) resident memory idle after load (ctx 2048).
Ratios are ours/anchor on medians of WALL time measured by the client (the user's view);
llama-server's own `timings.predicted_per_second` is printed beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import client
import common
import servers
from common import Row, console, median

ANCHORS = ["llama-server", "llama_cpp.server"]
# One first-time sample per round swung the ratio by +-20 % on a 2-vCPU VM; three fresh system
# prompts per server process give the median 3x the samples (the first in the process included).
SYSTEM_PROMPTS_PER_ROUND = 3
MODELS = {"smollm2": "SmolLM2-135M Q4_1", "gemma3": "Gemma-3-270M Q4_K_M"}
N_TOKENS = 128
CTX = 2048

# Greedy decoding keeps counting, so even a server without ignore_eos generates all 128 tokens.
COUNT_PROMPT = "Count from {a} to {b}, separated by commas: {a}, {a1}, {a2},"
QUESTIONS = [
    "What time does the museum open?",
    "Where is the cafe?",
    "Can I bring my dog?",
    "How much is a ticket for a child?",
]


def count_prompt(start: int) -> str:
    return COUNT_PROMPT.format(a=start, b=start + 900, a1=start + 1, a2=start + 2)


def system_prompt(tag: int) -> str:
    """About 500 tokens of kiosk instructions; `tag` makes each one a fresh prefix."""
    rules = [
        f"Rule {i}: when a visitor asks about gallery {i + tag}, answer politely, give the floor "
        f"number {i % 4 + 1}, mention that photography without flash is allowed, and keep "
        f"the answer under forty words."
        for i in range(1, 15)
    ]
    head = f"Session {tag}. You are the information kiosk of the City Museum. "
    return head + " ".join(rules) + "\nVisitor: "


def rotated(kinds: list[str], r: int) -> list[str]:
    k = r % len(kinds)
    return kinds[k:] + kinds[:k]


class Figures:
    """figures[measure][kind] -> list of samples."""

    def __init__(self):
        self.data: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def add(self, measure: str, kind: str, value: float | None) -> None:
        if value is not None:
            self.data[measure][kind].append(value)

    def med(self, measure: str, kind: str) -> float | None:
        xs = self.data[measure].get(kind)
        return median(xs) if xs else None


def check_tokens(kind: str, comp: client.Completion, warned: set) -> None:
    if comp.completion_tokens != N_TOKENS and kind not in warned:
        warned.add(kind)
        console.log(
            f"[yellow]{kind} generated {comp.completion_tokens} tokens, not {N_TOKENS}: "
            f"its rate is computed on what it generated[/]"
        )


def single_process_round(kind: str, model: Path, mkey: str, tag: int, n_comp: int, fig: Figures, warned: set) -> None:
    """One fresh server (parallel 1, ctx 2048): cold start, RSS, (a) and (c)."""
    run = servers.start(kind, model, parallel=1, ctx=CTX)
    try:
        rss_ready = common.rss_mb(run.proc.pid)
        first = client.stream_first_token(run, count_prompt(1))
        fig.add(f"{mkey} cold start", kind, first.t_first - run.started)
        fig.add(f"{mkey} RSS at ready", kind, rss_ready)
        time.sleep(0.5)
        fig.add(f"{mkey} RSS idle after load", kind, common.tree_rss_mb(run.proc.pid))
        for i in range(n_comp):
            comp = client.complete(run, count_prompt(10 + 7 * i), N_TOKENS)
            check_tokens(kind, comp, warned)
            fig.add(f"{mkey} tps wall", kind, comp.wall_tps)
            fig.add(f"{mkey} tps server", kind, comp.server_tps)
        for j in range(SYSTEM_PROMPTS_PER_ROUND):  # each a fresh prefix: first time, then cached
            sys_p = system_prompt(10 * tag + j)
            fig.add(f"{mkey} ttft first", kind, client.stream_first_token(run, sys_p + QUESTIONS[0]).ttft)
            for q in QUESTIONS[1:]:
                fig.add(f"{mkey} ttft cached", kind, client.stream_first_token(run, sys_p + q).ttft)
        fig.add(f"{mkey} prompt tokens", kind, client.complete(run, sys_p + QUESTIONS[0], 1).prompt_tokens)
        console.log(
            f"  {kind:16s} cold {fig.data[f'{mkey} cold start'][kind][-1]:.2f} s, "
            f"{median(fig.data[f'{mkey} tps wall'][kind][-n_comp:]):.1f} t/s, "
            f"ttft {fig.data[f'{mkey} ttft first'][kind][-1] * 1000:.0f} / "
            f"{fig.data[f'{mkey} ttft cached'][kind][-1] * 1000:.0f} ms, "
            f"RSS {fig.data[f'{mkey} RSS idle after load'][kind][-1]:.0f} MB"
        )
    finally:
        common.stop(run.proc)


def parallel_round(kind: str, model: Path, mkey: str, waves: int, fig: Figures, warned: set) -> None:
    """One fresh server with 4 slots: aggregate tokens/s of 4 concurrent clients."""
    run = servers.start(kind, model, parallel=4, ctx=CTX)
    try:
        client.complete(run, count_prompt(3), 8)  # warm up
        for w in range(waves):
            prompts = [count_prompt(100 * (c + 1) + w) for c in range(4)]
            agg, done = client.concurrent(run, prompts, N_TOKENS)
            for comp in done:
                check_tokens(kind, comp, warned)
            fig.add(f"{mkey} tps 4 clients", kind, agg)
            console.log(f"  {kind:16s} 4 clients wave {w + 1}: {agg:.1f} t/s aggregate")
    finally:
        common.stop(run.proc)


def rows_for(mkey: str, fig: Figures, kinds: list[str], parallel: bool) -> list[Row]:
    label = MODELS[mkey].split()[0]

    def row(measure, unit, key, scale=1.0, goal="", note=""):
        vals = {k: fig.med(f"{mkey} {key}", k) for k in kinds}
        vals = {k: (v * scale if v is not None else None) for k, v in vals.items()}
        return Row(f"{label} {measure}", unit, vals.get("ours"), {a: vals.get(a) for a in ANCHORS}, goal, note)

    rows = [
        row(
            "tokens/s, 1 client (wall)",
            "t/s",
            "tps wall",
            goal=">= 0.97x llama-server",
            note=f"{N_TOKENS}-token completions, client wall time per request over HTTP",
        ),
        row(
            "tokens/s, 1 client (server timings)",
            "t/s",
            "tps server",
            note="the server's own predicted_per_second, where reported",
        ),
    ]
    if parallel:
        rows.append(
            row("tokens/s, 4 clients aggregate (wall)", "t/s", "tps 4 clients", goal=">= 0.9x llama-server -np 4")
        )
    rows += [
        row("TTFT ~500-tok system prompt, first", "ms", "ttft first", 1000, goal="<= 1.1x llama-server"),
        row("TTFT same system prompt, cached", "ms", "ttft cached", 1000, goal="<= 1.1x llama-server"),
        row("system prompt length", "tokens", "prompt tokens"),
        row(
            "cold start to first token",
            "s",
            "cold start",
            goal="<= 0.6 s; as a ratio <= 2.5x llama-server",
            note="the issue's 0.6 s goal was set where llama-server takes 0.24 s and llama_cpp.server "
            "0.55 s: read here as <= 2.5x llama-server (~1.09x llama_cpp.server) on the same host",
        ),
        row("RSS at ready (main process)", "MB", "RSS at ready"),
        row("RSS idle after load + 1 request", "MB", "RSS idle after load", goal="<= llama-server + 60 MB"),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round, SmolLM2 first (~1-2 min)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per server (default 3, quick 1)")
    ap.add_argument("--only", default="", help="comma list of servers to run (default: all available)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    args = ap.parse_args(argv)
    common.exit_cleanly_on_sigterm()
    rounds = args.rounds or (1 if args.quick else 3)
    n_comp = 2 if args.quick else 3
    kinds = servers.available_kinds()
    if args.only:
        kinds = [k for k in kinds if k in args.only.split(",")]
    if not kinds:
        raise SystemExit("no server to benchmark")
    fig, warned = Figures(), set()
    load = [common.warn_if_busy()]
    models = {k: common.bundled_model(k) for k in MODELS}
    for mkey, model in models.items():
        console.rule(f"{MODELS[mkey]}: single client, TTFT, cold start, RSS ({rounds} rounds)")
        for r in range(rounds):
            for kind in rotated(kinds, r):
                single_process_round(kind, model, mkey, 1000 * r + kinds.index(kind), n_comp, fig, warned)
    console.rule(f"{MODELS['smollm2']}: 4 concurrent clients ({rounds} rounds)")
    for r in range(rounds):
        for kind in rotated(kinds, r):
            parallel_round(kind, models["smollm2"], "smollm2", 1 if args.quick else 2, fig, warned)
    load.append(common.warn_if_busy())
    rows = rows_for("smollm2", fig, kinds, True) + rows_for("gemma3", fig, kinds, False)
    anchors = [a for a in ANCHORS if a in kinds]
    if args.json:
        print(
            common.rows_json(
                rows,
                anchors,
                {
                    "samples": fig.data,
                    "rounds": rounds,
                    "ratio_basis": "client wall time over HTTP",
                    "load_average": load,
                },
            )
        )
    else:
        common.print_table(
            "edge serve vs llama-server and llama_cpp.server (ratios: ours/anchor, client wall time)", rows, anchors
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
