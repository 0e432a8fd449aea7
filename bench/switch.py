"""Benchmark: switching models in one `edge serve` against a cold llama-server start, in one run.

    python bench/switch.py [--rounds N] [--json]

Our server runs with no model named (the whole store, loaded on demand); each round, for each
bundled model (SmolLM2 Q4_1, Gemma-3-270M Q4_K_M), the model is unloaded (an empty request with
keep_alive 0), then a streamed /v1/completions request names it: switch latency is from that
request to its first token, the load included. The anchor is what a user without a multi-model
server does: start `llama-server -m FILE` on the same file and send the same request; its figure
is from Popen to the first token. Same threads (2), context (2048) and one slot on both sides.
Goal: ours/llama-server <= 1.5 on the medians.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import client
import common
import httpx
import servers
from common import Row, console, median

MODELS = {
    "smollm2": ("smollm2:135m-q4_1", "SmolLM2-135M Q4_1"),
    "gemma3": ("gemma3:270m-q4_k_m", "Gemma-3-270M Q4_K_M"),
}
CTX = 2048
PROMPT = "Count from 1 to 20, separated by commas: 1, 2, 3,"


class StoreServer(servers.EdgeServer):
    """`edge serve` with no MODEL: every model of the store, loaded by the first request naming it."""

    def command(self, model, port, parallel, ctx):
        cmd = super().command(model, port, parallel, ctx)
        cmd.remove(str(model))
        return cmd + ["--keep-alive=-1"]  # a model stays until this benchmark unloads it


def start_store_server() -> servers.Running:
    servers.KINDS["ours-store"] = StoreServer("ours-store", "/health", {"ignore_eos": True})
    any_file = common.bundled_model("smollm2")  # only for the command line's shape; removed again
    return servers.start("ours-store", any_file, parallel=1, ctx=CTX)


def switch_latency(run: servers.Running, name: str) -> float:
    """Unload `name`, then the time from a request naming it to its first token."""
    r = httpx.post(run.url("/api/generate"), json={"model": name, "keep_alive": 0}, timeout=120)
    r.raise_for_status()
    run.model_id = name
    return client.stream_first_token(run, PROMPT).ttft


def cold_llama_server(path: Path) -> float:
    """llama-server started on the file: Popen to the first streamed token."""
    run = servers.start("llama-server", path, parallel=1, ctx=CTX)
    try:
        return client.stream_first_token(run, PROMPT).t_first - run.started
    finally:
        common.stop(run.proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = ap.parse_args()
    common.exit_cleanly_on_sigterm()
    common.warn_if_busy()
    ours: dict[str, list[float]] = {k: [] for k in MODELS}
    cold: dict[str, list[float]] = {k: [] for k in MODELS}
    run = start_store_server()
    try:
        for name, _ in MODELS.values():
            switch_latency(run, name)  # first load of each file: page cache and caches warm, as for the anchor
        for i in range(args.rounds):
            for key, (name, _) in MODELS.items():
                if i % 2 == 0:  # alternate which side goes first within a round
                    ours[key].append(switch_latency(run, name))
                    cold[key].append(cold_llama_server(common.bundled_model(key)))
                else:
                    cold[key].append(cold_llama_server(common.bundled_model(key)))
                    ours[key].append(switch_latency(run, name))
            console.log(
                f"round {i + 1}: " + ", ".join(f"{k} {ours[k][-1]:.2f} s vs {cold[k][-1]:.2f} s cold" for k in MODELS)
            )
    finally:
        common.stop(run.proc)
    rows = [
        Row(
            f"{label} switch to first token",
            "s",
            median(ours[key]),
            {"llama-server": median(cold[key])},
            goal="ours/llama-server <= 1.5 (cold start on the same file)",
        )
        for key, (_, label) in MODELS.items()
    ]
    common.print_table("switch latency: a model not loaded, to its first token", rows, ["llama-server"])
    if args.json:
        print(common.rows_json(rows, ["llama-server"], {"rounds": args.rounds, "ctx": CTX}))


if __name__ == "__main__":
    main()
