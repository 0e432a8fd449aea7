"""Copy-heavy generation: our prompt-lookup speculation against llama-server, default and with its own
n-gram speculation; and free-form chat, ours with speculation against ours without (1 and 4 clients).

Every request is a new prompt (fresh names, numbers and items each round, so no cache helps), greedy,
streamed /v1/completions with `ignore_eos`, so every server generates exactly --max-tokens tokens (equal
work). Three copy-heavy kinds: list the purchases a given passage tells of, write records as JSON, repeat
a list with one edit. Each prompt shows one solved example of its task first (few-shot), the way a small
or base model is prompted: asked zero-shot, the bundled 135M/270M models answered with text of their own
(numbered blanks, one line repeated) that the prompt did not contain, so the requests did not copy; with
the example, 60-85 % of their answer tokens continue an n-gram of the context. Per request, on the client's clock: time to first token (prompt evaluation)
and decode tokens/s = (tokens - 1) / (last chunk - first chunk). The servers answer each prompt in a
rotated order; medians over all prompts. Ours with speculation must give the same text as ours without
it on every prompt (counted and reported).

    python bench/spec.py [--model smollm2|gemma3|both] [--rounds 3] [--anchor-spec "--spec-type ngram-simple"]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import client as bodies
import common
import servers

NAMES = ["Ada", "Bruno", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kofi", "Lena"]
CITIES = ["Lisbon", "Oslo", "Turin", "Krakow", "Porto", "Ghent", "Bergen", "Lyon", "Graz", "Tartu"]
THINGS = ["lamp", "kettle", "chair", "bicycle", "umbrella", "notebook", "blanket", "teapot", "ladder", "mirror"]
ADJ = ["red", "small", "old", "heavy", "wooden", "blue", "folding", "spare", "broken", "new"]
TOPICS = ["a lighthouse keeper", "a lost kite", "the first day of spring", "a robot learning to paint",
          "a night market", "an old library", "a mountain village", "a trip to the sea"]  # fmt: skip


def _purchases(r: random.Random, n: int) -> list[str]:
    return [
        f"{r.choice(NAMES)} from {r.choice(CITIES)} bought a {r.choice(ADJ)} {r.choice(THINGS)} for {r.randint(3, 95)} euros."
        for _ in range(n)
    ]


def passage_prompt(r: random.Random) -> str:
    def task(facts: list[str]) -> str:
        return (
            f"Passage: {' '.join(facts)}\nTask: list every purchase in the passage, one sentence per line.\nAnswer:\n"
        )

    example, facts = _purchases(r, 4), _purchases(r, 7)
    return task(example) + "\n".join(example) + "\n\n" + task(facts)


def json_prompt(r: random.Random) -> str:
    def record() -> dict:
        return {
            "name": f"{r.choice(NAMES)} {r.choice(NAMES)}son",
            "age": r.randint(18, 90),
            "city": r.choice(CITIES),
            "item": f"{r.choice(ADJ)} {r.choice(THINGS)}",
            "id": r.randint(1000, 9999),
        }

    def task(records: list[dict]) -> str:
        rows = [f"{x['name']}, age {x['age']}, lives in {x['city']}, owns a {x['item']}, id {x['id']}" for x in records]
        return "Records:\n" + "\n".join(rows) + "\nJSON:\n"

    example, records = [record() for _ in range(2)], [record() for _ in range(5)]
    return task(example) + "\n".join(json.dumps(x) for x in example) + "\n\n" + task(records)


def list_prompt(r: random.Random) -> str:
    def task() -> tuple[str, str]:
        items = [f"{r.choice(ADJ)} {r.choice(THINGS)} from {r.choice(CITIES)}" for _ in range(8)]
        i = r.randrange(len(items))
        new = f"{r.choice(ADJ)} {r.choice(THINGS)} from {r.choice(CITIES)}"
        edited = [*items[:i], new, *items[i + 1 :]]
        listing = "\n".join(f"- {x}" for x in items)
        return f"List:\n{listing}\nReplace '{items[i]}' with '{new}'.\nNew list:\n", "\n".join(f"- {x}" for x in edited)

    (example, answer), (prompt, _) = task(), task()
    return example + answer + "\n\n" + prompt


def chat_prompt(r: random.Random) -> str:
    return f"Write a short story about {r.choice(TOPICS)} and {r.choice(NAMES)} from {r.choice(CITIES)}.\nStory:"


KINDS = {"passage": passage_prompt, "json": json_prompt, "list": list_prompt}


class _Extra:
    """A server kind with extra command-line arguments; requests ask for exactly max_tokens (ignore_eos)."""

    def __init__(self, base: servers.ServerKind, name: str, args: list[str]):
        self.base, self.name, self.args = base, name, args
        self.ready_path, self.extra = base.ready_path, {"ignore_eos": True}

    def command(self, model, port, parallel, ctx):
        return self.base.command(model, port, parallel, ctx) + self.args

    def model_id(self, model, listed):
        return self.base.model_id(model, listed)


def register(anchor_spec: list[str]) -> dict[str, str]:
    """The four servers of this benchmark, added to servers.KINDS; returns label -> kind name."""

    # a prompt cache on disk outlives the server: a fresh folder each, so that no other run's states help
    def fresh() -> list[str]:
        return ["--cache-dir", tempfile.mkdtemp(prefix="spec-bench-cache-")]

    kinds = {
        "ours+spec": _Extra(servers.KINDS["ours"], "ours+spec", ["--spec", *fresh()]),
        "ours": _Extra(servers.KINDS["ours"], "ours-nospec", ["--no-spec", *fresh()]),
        "llama-server": _Extra(servers.KINDS["llama-server"], "llama-server-default", []),
        "llama-server+ngram": _Extra(servers.KINDS["llama-server"], "llama-server-ngram", anchor_spec),
    }
    for k in kinds.values():
        servers.KINDS[k.name] = k  # type: ignore[assignment]
    return {label: k.name for label, k in kinds.items()}


def measure(model: Path, labels: dict[str, str], rounds: int, max_tokens: int, seed: int) -> dict:
    runs = {label: servers.start(kind, model, ctx=4096) for label, kind in labels.items()}
    kinds = [*KINDS, "chat"]
    got: dict[str, dict[str, list[bodies.Timed]]] = {kind: {label: [] for label in runs} for kind in kinds}
    same, total = 0, 0
    r = random.Random(seed)
    try:
        with httpx.Client(timeout=300) as client:
            for rnd in range(rounds):
                for i, (kind, make) in enumerate([*KINDS.items(), ("chat", chat_prompt)]):
                    prompt = make(r)
                    k = (rnd + i) % len(runs)
                    order = list(runs)[k:] + list(runs)[:k]
                    for label in order:
                        got[kind][label].append(bodies.stream_timed(runs[label], prompt, max_tokens, client))
                    total += 1
                    same += got[kind]["ours+spec"][-1].text == got[kind]["ours"][-1].text
                    if got[kind]["ours+spec"][-1].text != got[kind]["ours"][-1].text:
                        common.console.log(f"[red]{kind}: output differs with speculation[/]")
                common.console.log(
                    f"round {rnd} decode t/s: "
                    + "; ".join(f"{kd} " + " ".join(f"{got[kd][lb][-1].decode_tps:.0f}" for lb in runs) for kd in kinds)
                )
        stats = _metrics(runs["ours+spec"])
    finally:
        for run in runs.values():
            common.stop(run.proc)
    med = lambda xs: common.median([float(x) for x in xs])  # noqa: E731
    copy = {lb: med([t.decode_tps for kd in KINDS for t in got[kd][lb]]) for lb in runs}
    return {
        "copy_decode_tps": copy,
        "decode_tps_by_kind": {kd: {lb: med([t.decode_tps for t in got[kd][lb]]) for lb in runs} for kd in kinds},
        "ttft_ms_by_kind": {kd: {lb: 1000 * med([t.ttft for t in got[kd][lb]]) for lb in runs} for kd in kinds},
        "copy_wall_tps": {lb: med([t.wall_tps for kd in KINDS for t in got[kd][lb]]) for lb in runs},
        "vs_llama_server": copy["ours+spec"] / copy["llama-server"],
        "vs_llama_server_ngram": copy["ours+spec"] / copy["llama-server+ngram"],
        "plain_vs_llama_server": copy["ours"] / copy["llama-server"],
        "chat_spec_vs_nospec": med([t.decode_tps for t in got["chat"]["ours+spec"]])
        / med([t.decode_tps for t in got["chat"]["ours"]]),
        "identical_outputs": f"{same}/{total}",
        "ours_spec_counters": stats,
    }


def measure_chat4(model: Path, labels: dict[str, str], rounds: int, max_tokens: int, seed: int) -> dict:
    """Free-form chat, 4 clients at once on 4 slots: aggregate tokens/s of each wave, ours with and without
    speculation, waves alternating (AB BA ...).

    A wave's rate varies by a fifth or more on a shared VM (another process, the host), more than the
    effect measured. So each round's two waves, run back to back on the same prompts, give one ratio;
    the result is the median of those ratios (a disturbed wave moves one ratio, not the median), with
    the ratio of the median rates beside it."""
    runs = {lb: servers.start(labels[lb], model, ctx=4096, parallel=4) for lb in ("ours+spec", "ours")}
    tps: dict[str, list[float]] = {lb: [] for lb in runs}
    r = random.Random(seed + 7)
    clients = [httpx.Client(timeout=300) for _ in range(4)]
    try:
        for rnd in range(rounds):
            prompts = [chat_prompt(r) for _ in clients]
            order = list(runs) if rnd % 2 == 0 else list(runs)[::-1]
            for lb in order:
                t0 = time.perf_counter()
                with ThreadPoolExecutor(4) as pool:
                    one = lambda pc, run=runs[lb]: bodies.stream_timed(run, pc[0], max_tokens, pc[1])  # noqa: E731
                    done = list(pool.map(one, zip(prompts, clients)))
                tps[lb].append(sum(t.tokens for t in done) / (time.perf_counter() - t0))
            common.console.log(f"chat4 wave {rnd} tokens/s: " + " ".join(f"{lb} {v[-1]:.1f}" for lb, v in tps.items()))
        stats = _metrics(runs["ours+spec"])
    finally:
        for c in clients:
            c.close()
        for run in runs.values():
            common.stop(run.proc)
    med = {lb: common.median(v) for lb, v in tps.items()}
    paired = sorted(a / b for a, b in zip(tps["ours+spec"], tps["ours"]))
    return {
        "chat4_tps": med,
        "chat4_spec_vs_nospec": common.median(paired),
        "chat4_ratio_of_medians": med["ours+spec"] / med["ours"],
        "chat4_paired_ratios": [round(x, 3) for x in paired],
        "chat4_spec_counters": stats,
    }


def _metrics(run) -> dict:
    out = {}
    for line in httpx.get(run.url("/metrics"), timeout=10).text.splitlines():
        if line.startswith("edge_spec_"):
            name, value = line.split()
            out[name] = float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="both", help="smollm2, gemma3 or both (the bundled models)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the 3 copy kinds + 1 chat prompt")
    ap.add_argument("--max-tokens", type=int, default=160, help="tokens every request generates (ignore_eos)")
    ap.add_argument("--chat4-rounds", type=int, default=8, help="pairs of waves of 4 concurrent chat requests; 0: none")
    ap.add_argument("--seed", type=int, default=None, help="prompts' random seed (default: the clock: new prompts)")
    ap.add_argument(
        "--anchor-spec",
        default="--spec-type ngram-simple",
        help="llama-server's speculation arguments (see llama-server --help: --spec-type ngram-*)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    common.exit_cleanly_on_sigterm()
    common.warn_if_busy()
    labels = register(args.anchor_spec.split())
    if args.seed is None:
        args.seed = time.time_ns() % 1_000_000
    common.console.log(f"prompt seed {args.seed}")
    models = ["smollm2", "gemma3"] if args.model == "both" else [args.model]
    results = {}
    for m in models:
        path = common.bundled_model(m)
        results[m] = measure(path, labels, args.rounds, args.max_tokens, args.seed)
        if args.chat4_rounds:
            results[m] |= measure_chat4(path, labels, args.chat4_rounds, args.max_tokens, args.seed)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    c = common.console
    for m, res in results.items():
        n = args.rounds * len(KINDS)
        c.print(f"[bold]{m}[/]: decode tokens/s, {args.max_tokens} tokens per request (median of {n} copy prompts)")
        c.print("  " + "   ".join(f"{k} {v:.1f}" for k, v in res["copy_decode_tps"].items()))
        for kind, row in res["decode_tps_by_kind"].items():
            ttft = res["ttft_ms_by_kind"][kind]
            c.print(f"    {kind}: " + "   ".join(f"{k} {v:.1f} ({ttft[k]:.0f} ms)" for k, v in row.items()))
        c.print("  (time to first token in brackets)")
        c.print(f"  wall tokens/s (prompt included): {res['copy_wall_tps']}")
        c.print(f"  ours+spec / llama-server          {res['vs_llama_server']:.2f}  (goal >= 1.3)")
        c.print(f"  ours+spec / llama-server {args.anchor_spec}  {res['vs_llama_server_ngram']:.2f}  (goal >= 1.0)")
        c.print(f"  ours (no spec) / llama-server     {res['plain_vs_llama_server']:.2f}")
        c.print(f"  free-form chat, spec / no spec    {res['chat_spec_vs_nospec']:.3f}  (goal >= 0.98)")
        if "chat4_tps" in res:
            c.print(
                f"  4 clients chat, spec / no spec    {res['chat4_spec_vs_nospec']:.3f}  (goal >= 0.98; median of "
                f"{len(res['chat4_paired_ratios'])} paired waves {res['chat4_paired_ratios']}; ratio of medians "
                f"{res['chat4_ratio_of_medians']:.3f} {res['chat4_tps']})"
            )
            c.print(f"  4 clients chat, our counters: {res['chat4_spec_counters']}")
        c.print(f"  identical outputs with/without speculation: {res['identical_outputs']}")
        c.print(f"  our counters: {res['ours_spec_counters']}")


if __name__ == "__main__":
    main()
