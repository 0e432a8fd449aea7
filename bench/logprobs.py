"""Log probabilities: what they cost, what they leave alone, and whether they match llama-server's.

    python bench/logprobs.py speed  [--ref main] [--model smollm2|gemma3] [--rounds 6]
    python bench/logprobs.py oracle [--model smollm2|gemma3] [--tokens 32]

`speed`: tokens/s of 128-token greedy completions (one client, /v1/completions, ignore_eos) of
`edge serve` from this tree against `edge serve` from a git ref (its files exported with
`git archive`, run with the same venv), logprobs OFF on both: the plain path must stay as fast
(goal >= 0.98x). A third server, this tree again, answers the same requests with `logprobs: 5`:
the price a client pays when it asks (no goal). A fresh server per round, order rotated, ratio
of the medians and median of the per-round ratios, as bench/serve_ab.py does.

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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import httpx
import servers
from common import console, median
from serve import CTX, N_TOKENS, count_prompt

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-3
ORACLE_PROMPT = "The capital of France is Paris. The capital of Germany is"
SPEED_KINDS = ["this", "ref", "this+logprobs"]


class TreeServer(servers.ServerKind):
    """`edge serve` from a source tree (PYTHONPATH), with this venv."""

    def __init__(self, name: str, tree: Path, extra: dict):
        super().__init__(name, "/health", extra)
        self.tree = tree

    def command(self, model, port, parallel, ctx):
        return [
            sys.executable,
            "-c",
            "import sys; sys.argv[0] = 'edge'; from edge.cli import main; main()",
            "serve",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--parallel",
            str(parallel),
            "--ctx",
            str(ctx),
            "--threads",
            str(servers.THREADS),
        ]


def start(kind: servers.ServerKind, model: Path, env: dict | None = None) -> servers.Running:
    port = common.free_port()
    log = common.work_dir() / "logs" / f"logprobs-{kind.name}-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(kind.command(model, port, 1, CTX), stdout=out, stderr=subprocess.STDOUT, env=env)
    run = servers.Running(kind, proc, f"http://127.0.0.1:{port}", started, log=log)
    try:
        servers._wait_ready(run, 120)
    except BaseException:
        common.stop(proc)
        raise
    return run


def tree_env(tree: Path) -> dict:
    import os

    return dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def export_ref(ref: str, into: Path) -> Path:
    """The files of `ref` (no .git, nothing in the repository changes)."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", ref], capture_output=True, text=True, check=True)
    tree = into / sha.stdout.strip()[:12]
    if not tree.is_dir():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def tps(run: servers.Running, prompt: str) -> float:
    body = {"model": run.model_id or "default", "prompt": prompt, "max_tokens": N_TOKENS, "temperature": 0.0}
    body.update(run.kind.extra)
    t0 = time.perf_counter()
    r = httpx.post(run.url("/v1/completions"), json=body, timeout=300)
    seconds = time.perf_counter() - t0
    r.raise_for_status()
    n = r.json()["usage"]["completion_tokens"]
    if n != N_TOKENS:
        console.log(f"[yellow]{run.kind.name} generated {n} tokens, not {N_TOKENS}[/]")
    return n / seconds


def speed(args) -> int:
    model = common.bundled_model(args.model)
    with tempfile.TemporaryDirectory(prefix="edge-ref-") as tmp:
        ref_tree = export_ref(args.ref, Path(tmp))
        kinds = {
            "this": (TreeServer("this", REPO, {"ignore_eos": True}), tree_env(REPO)),
            "ref": (TreeServer("ref", ref_tree, {"ignore_eos": True}), tree_env(ref_tree)),
            "this+logprobs": (TreeServer("this+logprobs", REPO, {"ignore_eos": True, "logprobs": 5}), tree_env(REPO)),
        }
        got: dict[str, list[float]] = {k: [] for k in SPEED_KINDS}
        paired = []
        load = [common.warn_if_busy()]
        for r in range(args.rounds):
            this = {}
            order = SPEED_KINDS[r % 3 :] + SPEED_KINDS[: r % 3]
            for name in order:
                kind, env = kinds[name]
                run = start(kind, model, env)
                try:
                    tps(run, count_prompt(3))  # warm up
                    xs = [tps(run, count_prompt(10 + 7 * i)) for i in range(4)]
                finally:
                    common.stop(run.proc)
                got[name] += xs
                this[name] = median(xs)
                console.log(f"  {name:14s} round {r + 1}: " + " ".join(f"{x:.1f}" for x in xs))
            paired.append(this["this"] / this["ref"])
        load.append(common.warn_if_busy())
    a, b, c = (median(got[k]) for k in SPEED_KINDS)
    console.print(
        f"{args.model} logprobs off: this {a:.1f} t/s vs {args.ref} {b:.1f} t/s = {a / b:.3f}x "
        f"(median of per-round ratios {median(paired):.3f}x; goal >= 0.98x); "
        f"with logprobs 5: {c:.1f} t/s = {c / a:.3f}x of off"
    )
    return 0


def oracle(args) -> int:
    model = common.bundled_model(args.model)
    if not common.anchor_binary("llama-server", required=False):
        raise SystemExit("llama-server is not built: python bench/anchors.py")
    body = {"prompt": ORACLE_PROMPT, "temperature": 0.0, "max_tokens": args.tokens}
    ours_run = start(TreeServer("ours", REPO, {}), model, tree_env(REPO))
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
    s = sub.add_parser("speed", help="tokens/s, logprobs off, this tree vs a git ref (and with logprobs on)")
    s.add_argument("--ref", default="main")
    s.add_argument("--model", choices=["smollm2", "gemma3"], default="smollm2")
    s.add_argument("--rounds", type=int, default=6)
    o = sub.add_parser("oracle", help="chosen-token logprobs vs llama-server's, greedy, same file and prompt")
    o.add_argument("--model", choices=["smollm2", "gemma3"], default="smollm2")
    o.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args(argv)
    common.exit_cleanly_on_sigterm()
    return speed(args) if args.measure == "speed" else oracle(args)


if __name__ == "__main__":
    sys.exit(main())
