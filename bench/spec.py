"""Copy-heavy generation: our prompt-lookup speculation against llama-server, default and with its own
n-gram speculation; and free-form chat, ours with speculation against ours without.

Every request is a new prompt (fresh names, numbers and items each round, so no cache helps), greedy,
/v1/completions, one client, stopping where the model stops (at most --max-tokens). Three copy-heavy
kinds: answer by quoting a given passage, extract a record's fields as JSON, repeat a list with edits.
Tokens/s = completion tokens / request wall time over loopback HTTP; the servers answer each prompt
in a rotated order; medians over all prompts. Ours with speculation must give the same text as ours
without it on every prompt (counted and reported).

    python bench/spec.py [--model smollm2|gemma3|both] [--rounds 4] [--anchor-spec ngram-simple]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import servers
from client import complete

NAMES = ["Ada", "Bruno", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kofi", "Lena"]
CITIES = ["Lisbon", "Oslo", "Turin", "Krakow", "Porto", "Ghent", "Bergen", "Lyon", "Graz", "Tartu"]
THINGS = ["lamp", "kettle", "chair", "bicycle", "umbrella", "notebook", "blanket", "teapot", "ladder", "mirror"]
ADJ = ["red", "small", "old", "heavy", "wooden", "blue", "folding", "spare", "broken", "new"]
TOPICS = ["a lighthouse keeper", "a lost kite", "the first day of spring", "a robot learning to paint",
          "a night market", "an old library", "a mountain village", "a trip to the sea"]  # fmt: skip


def passage_prompt(r: random.Random) -> str:
    facts = []
    for _ in range(6):
        who, city, thing = r.choice(NAMES), r.choice(CITIES), r.choice(THINGS)
        facts.append(
            f"{who} from {city} bought a {r.choice(ADJ)} {thing} for {r.randint(3, 95)} euros on day {r.randint(1, 28)}."
        )
    text = " ".join(facts)
    return f"Passage: {text}\n\nQuestion: What did everyone buy? Answer by repeating the passage's sentences.\nAnswer:"


def json_prompt(r: random.Random) -> str:
    rows = [
        f"{r.choice(NAMES)} {r.choice(NAMES)}son, age {r.randint(18, 90)}, lives in {r.choice(CITIES)}, "
        f"owns a {r.choice(ADJ)} {r.choice(THINGS)}, id {r.randint(1000, 9999)}"
        for _ in range(4)
    ]
    return (
        "Records:\n"
        + "\n".join(rows)
        + "\n\nWrite each record as a JSON object with keys name, age, city, item, id.\nJSON:\n"
    )


def list_prompt(r: random.Random) -> str:
    items = [f"{r.choice(ADJ)} {r.choice(THINGS)} from {r.choice(CITIES)}" for _ in range(10)]
    old, new = items[3], f"{r.choice(ADJ)} {r.choice(THINGS)}"
    listing = "\n".join(f"- {i}" for i in items)
    return f"List:\n{listing}\n\nRepeat the list exactly, but replace '{old}' with '{new}'.\nNew list:\n"


def chat_prompt(r: random.Random) -> str:
    return f"Write a short story about {r.choice(TOPICS)} and {r.choice(NAMES)} from {r.choice(CITIES)}.\nStory:"


KINDS = {"passage": passage_prompt, "json": json_prompt, "list": list_prompt}


class _Extra:
    """A server kind with extra command-line arguments and no request extras (the model stops itself)."""

    def __init__(self, base: servers.ServerKind, name: str, args: list[str]):
        self.base, self.name, self.args = base, name, args
        self.ready_path, self.extra = base.ready_path, {}

    def command(self, model, port, parallel, ctx):
        return self.base.command(model, port, parallel, ctx) + self.args

    def model_id(self, model, listed):
        return self.base.model_id(model, listed)


def register(anchor_spec: list[str]) -> dict[str, str]:
    """The four servers of this benchmark, added to servers.KINDS; returns label -> kind name."""
    kinds = {
        "ours+spec": _Extra(servers.KINDS["ours"], "ours+spec", ["--spec"]),
        "ours": _Extra(servers.KINDS["ours"], "ours-nospec", ["--no-spec"]),
        "llama-server": _Extra(servers.KINDS["llama-server"], "llama-server-default", []),
        "llama-server+ngram": _Extra(servers.KINDS["llama-server"], "llama-server-ngram", anchor_spec),
    }
    for k in kinds.values():
        servers.KINDS[k.name] = k  # type: ignore[assignment]
    return {label: k.name for label, k in kinds.items()}


def measure(model: Path, labels: dict[str, str], rounds: int, max_tokens: int, seed: int) -> dict:
    runs = {label: servers.start(kind, model, ctx=4096) for label, kind in labels.items()}
    tps: dict[str, dict[str, list[float]]] = {kind: {label: [] for label in runs} for kind in [*KINDS, "chat"]}
    tokens: dict[str, list[int]] = {label: [] for label in runs}
    same, total = 0, 0
    r = random.Random(seed)
    try:
        for rnd in range(rounds):
            for i, (kind, make) in enumerate([*KINDS.items(), ("chat", chat_prompt)]):
                prompt = make(r)
                chosen = list(runs) if kind != "chat" else ["ours+spec", "ours"]
                k = (rnd + i) % len(chosen)
                texts = {}
                for label in chosen[k:] + chosen[:k]:
                    c = complete(runs[label], prompt, max_tokens)
                    tps[kind][label].append(c.wall_tps)
                    tokens[label].append(c.completion_tokens)
                    texts[label] = c.text
                total += 1
                same += texts["ours+spec"] == texts["ours"]
                if texts["ours+spec"] != texts["ours"]:
                    common.console.log(f"[red]{kind}: output differs with speculation[/]")
            common.console.log(f"round {rnd}: " + ", ".join(f"{k} {tps['json'][k][-1]:.0f}" for k in runs))
        stats = _metrics(runs["ours+spec"])
    finally:
        for run in runs.values():
            common.stop(run.proc)
    copy = {label: common.median([x for kind in KINDS for x in tps[kind][label]]) for label in runs}
    return {
        "copy_tps": copy,
        "copy_tps_by_kind": {kind: {label: common.median(v) for label, v in tps[kind].items()} for kind in KINDS},
        "chat_tps": {label: common.median(tps["chat"][label]) for label in ("ours+spec", "ours")},
        "vs_llama_server": copy["ours+spec"] / copy["llama-server"],
        "vs_llama_server_ngram": copy["ours+spec"] / copy["llama-server+ngram"],
        "chat_spec_vs_nospec": common.median(tps["chat"]["ours+spec"]) / common.median(tps["chat"]["ours"]),
        "identical_outputs": f"{same}/{total}",
        "median_completion_tokens": {label: common.median([float(t) for t in v]) for label, v in tokens.items()},
        "ours_spec_counters": stats,
    }


def _metrics(run) -> dict:
    import httpx

    out = {}
    for line in httpx.get(run.url("/metrics"), timeout=10).text.splitlines():
        if line.startswith("edge_spec_"):
            name, value = line.split()
            out[name] = float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="both", help="smollm2, gemma3 or both (the bundled models)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of the 3 copy kinds + 1 chat prompt")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
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
    models = ["smollm2", "gemma3"] if args.model == "both" else [args.model]
    results = {m: measure(common.bundled_model(m), labels, args.rounds, args.max_tokens, args.seed) for m in models}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    c = common.console
    for m, res in results.items():
        c.print(f"[bold]{m}[/]: copy-heavy tokens/s (median of {args.rounds * len(KINDS)} prompts per server)")
        c.print("  " + "   ".join(f"{k} {v:.1f}" for k, v in res["copy_tps"].items()))
        for kind, row in res["copy_tps_by_kind"].items():
            c.print(f"    {kind}: " + "   ".join(f"{k} {v:.1f}" for k, v in row.items()))
        c.print(f"  ours+spec / llama-server          {res['vs_llama_server']:.2f}  (goal >= 1.3)")
        c.print(f"  ours+spec / llama-server {args.anchor_spec}  {res['vs_llama_server_ngram']:.2f}  (goal >= 1.0)")
        c.print(f"  free-form chat, spec / no spec    {res['chat_spec_vs_nospec']:.3f}  (goal >= 0.98)")
        c.print(f"  identical outputs with/without speculation: {res['identical_outputs']}")
        c.print(f"  median completion tokens: {res['median_completion_tokens']}")
        c.print(f"  our counters: {res['ours_spec_counters']}")


if __name__ == "__main__":
    main()
