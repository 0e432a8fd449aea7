"""Log probabilities: what they cost, what they leave alone, and whether they match llama-server's.

    python bench/logprobs.py speed  [--model smollm2|gemma3] [--rounds 6] [--ref GIT_REF]
    python bench/logprobs.py oracle [--model smollm2|gemma3] [--tokens 32]

`speed`: tokens/s of 128-token greedy completions (one client, /v1/completions, ignore_eos, no
tools, no logprobs) of `edge serve` from this tree against llama-server on the same file, in the
same run, as bench/serve_ab.py measures it: a fresh server per round, order rotated, 4 samples each,
the ratio of the medians and the median of the per-round ratios. That ratio is then set against the
one README.md's Benchmarks table records for the same measure before tools and logprobs existed
(`--recorded`): the plain path must keep it (goal: now / recorded >= 0.98). Also measured: this tree
answering with `logprobs: 5` (the price a client pays when it asks; no goal), and with `--ref`,
`edge serve` from a git ref (its files exported with `git archive`, same venv) as a second baseline.

`oracle`: the same file and prompt, greedy, against llama-server's own `/completion` with
`n_probs` (its default reports the softmax of the raw logits, `post_sampling_probs` off, as we
do): the chosen tokens must be the same, their log probabilities within 1e-3, and the top-5
alternatives the same tokens. Needs the anchors (python bench/anchors.py). Both servers run
flash attention on auto (on, on a CPU): it changes the forward pass by up to 0.07 in a logprob,
so the two must agree on it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import client
import common
import httpx
import servers
from common import console, median
from serve import CTX, N_TOKENS, count_prompt

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-3
ORACLE_PROMPT = "The capital of France is Paris. The capital of Germany is"
# ours / llama-server, 1 client, 128-token completions, as README.md's Benchmarks table records them
RECORDED = {"smollm2": 1.03, "gemma3": 1.03}
PLAIN = {"ignore_eos": True}


def tree_env(tree: Path) -> dict:
    """`edge serve` imports the package from `tree` (PYTHONPATH comes before the venv's editable install)."""
    return {"PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}


def export_ref(ref: str, into: Path) -> Path:
    """The files of `ref` (no .git, nothing in the repository changes)."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", ref], capture_output=True, text=True, check=True)
    tree = into / sha.stdout.strip()[:12]
    if not tree.is_dir():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def samples(run: servers.Running) -> list[float]:
    """Wall tokens/s of 4 completions after one warm-up (bench/serve_ab.py's tps measure)."""
    client.complete(run, count_prompt(3), 8)
    out = []
    for i in range(4):
        done = client.complete(run, count_prompt(10 + 7 * i), N_TOKENS)
        if done.completion_tokens != N_TOKENS:
            console.log(f"[yellow]{run.kind.name} generated {done.completion_tokens} tokens, not {N_TOKENS}[/]")
        out.append(done.wall_tps)
    return out


def speed(args) -> int:
    model = common.bundled_model(args.model)
    if not common.anchor_binary("llama-server", required=False):
        raise SystemExit("llama-server is not built: python bench/anchors.py")
    with tempfile.TemporaryDirectory(prefix="edge-ref-") as tmp:
        kinds: dict[str, tuple[servers.ServerKind, dict]] = {
            "this": (servers.EdgeServer("this", "/health", PLAIN), tree_env(REPO)),
            "llama-server": (servers.KINDS["llama-server"], {}),
            "this+logprobs": (servers.EdgeServer("this+logprobs", "/health", {**PLAIN, "logprobs": 5}), tree_env(REPO)),
        }
        if args.ref:
            kinds["ref"] = (servers.EdgeServer("ref", "/health", PLAIN), tree_env(export_ref(args.ref, Path(tmp))))
        names = list(kinds)
        got: dict[str, list[float]] = {k: [] for k in names}
        paired: dict[str, list[float]] = {k: [] for k in names if k != "llama-server"}
        load = [common.warn_if_busy()]
        for r in range(args.rounds):
            this = {}
            for name in names[r % len(names) :] + names[: r % len(names)]:
                kind, env = kinds[name]
                run = servers.start(kind, model, parallel=1, ctx=CTX, env=env)
                try:
                    xs = samples(run)
                finally:
                    common.stop(run.proc)
                got[name] += xs
                this[name] = median(xs)
                console.log(f"  {name:14s} round {r + 1}: " + " ".join(f"{x:.1f}" for x in xs))
            for name in paired:
                paired[name].append(this[name] / this["llama-server"])
        load.append(common.warn_if_busy())
    med = {k: median(v) for k, v in got.items()}
    ratio, recorded = med["this"] / med["llama-server"], args.recorded or RECORDED[args.model]
    console.print(
        f"{args.model}, logprobs and tools absent: this {med['this']:.1f} t/s vs llama-server "
        f"{med['llama-server']:.1f} t/s = {ratio:.3f}x (median of per-round ratios {median(paired['this']):.3f}x; "
        f"{' '.join(f'{p:.2f}' for p in paired['this'])}); recorded {recorded:.2f}x: now/recorded "
        f"{ratio / recorded:.3f} (per-round {median(paired['this']) / recorded:.3f}; goal >= 0.98)"
    )
    console.print(
        f"with logprobs 5: {med['this+logprobs']:.1f} t/s = {med['this+logprobs'] / med['this']:.3f}x of off "
        f"(per-round vs llama-server {median(paired['this+logprobs']):.3f}x)"
    )
    if args.ref:
        console.print(
            f"{args.ref}: {med['ref']:.1f} t/s; this/ref {med['this'] / med['ref']:.3f}x "
            f"(per-round ratios vs llama-server: this {median(paired['this']):.3f}, ref {median(paired['ref']):.3f})"
        )
    console.print(f"load average before/after: {load}")
    return 0


def oracle(args) -> int:
    model = common.bundled_model(args.model)
    if not common.anchor_binary("llama-server", required=False):
        raise SystemExit("llama-server is not built: python bench/anchors.py")
    body = {"prompt": ORACLE_PROMPT, "temperature": 0.0, "max_tokens": args.tokens}
    ours_run = servers.start(servers.EdgeServer("ours", "/health"), model, parallel=1, ctx=CTX, env=tree_env(REPO))
    try:
        body["model"] = ours_run.model_id or "default"
        r = httpx.post(ours_run.url("/v1/completions"), json={**body, "logprobs": 5}, timeout=300)
        r.raise_for_status()
        ours = r.json()["choices"][0]["logprobs"]
    finally:
        common.stop(ours_run.proc)
    theirs_run = servers.start("llama-server", model, parallel=1, ctx=CTX)
    try:
        native = {"prompt": ORACLE_PROMPT, "temperature": 0.0, "n_predict": args.tokens, "n_probs": 5}
        r = httpx.post(theirs_run.url("/completion"), json={**native, "cache_prompt": False}, timeout=300)
        r.raise_for_status()
        theirs = r.json()["completion_probabilities"]
    finally:
        common.stop(theirs_run.proc)
    n = min(len(ours["tokens"]), len(theirs))
    same_tokens = ours["tokens"][:n] == [t["token"] for t in theirs[:n]]
    diffs = [abs(a - t["logprob"]) for a, t in zip(ours["token_logprobs"], theirs)]
    top_same = sum(set(o) == {x["token"] for x in t["top_logprobs"]} for o, t in zip(ours["top_logprobs"], theirs))
    worst = max(diffs) if diffs else float("nan")
    console.print(
        f"{args.model}: {n} tokens, same tokens: {same_tokens}; chosen-token logprob max |ours - llama-server| "
        f"{worst:.2e} (goal <= {TOLERANCE:g}); top-5 the same tokens at {top_same}/{n} positions"
    )
    return 0 if same_tokens and worst <= TOLERANCE else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="measure", required=True)
    s = sub.add_parser("speed", help="tokens/s with logprobs and tools absent, against llama-server in one run")
    s.add_argument("--model", choices=["smollm2", "gemma3"], default="smollm2")
    s.add_argument("--rounds", type=int, default=6)
    s.add_argument("--recorded", type=float, default=None, help="the recorded ours/llama-server ratio to keep")
    s.add_argument("--ref", default=None, help="also measure `edge serve` from this git ref")
    o = sub.add_parser("oracle", help="chosen-token logprobs vs llama-server's, greedy, same file and prompt")
    o.add_argument("--model", choices=["smollm2", "gemma3"], default="smollm2")
    o.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args(argv)
    common.exit_cleanly_on_sigterm()
    return speed(args) if args.measure == "speed" else oracle(args)


if __name__ == "__main__":
    sys.exit(main())
