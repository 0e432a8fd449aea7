"""What one decode call of n tokens costs against a call of one token, and what speculation can gain.

A drafted token is verified inside a decode call of several tokens, with logits for every position, so
prompt-lookup speculation pays only as far as a longer call is cheaper than that many single ones. This
evaluates a prompt of --prompt tokens, then times calls of n = 1 .. --max tokens after it (logits for all
of them, the KV of the call dropped after each), llama-cpp-python alone (no edge code), medians of
--reps. From those ratios it works out the best speed-up over plain decoding that drafts of any length
up to n - 1 can give when each drafted token is accepted with probability p (the geometric model of
edge.engine.speculative.choose), for a few p.

    python bench/decode_cost.py [--model smollm2|gemma3|FILE.gguf] [--prompt 300] [--max 17] [--reps 25]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common

from edge.engine.speculative import expected_accepted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2, gemma3 (the bundled models) or a GGUF file")
    ap.add_argument("--prompt", type=int, default=300, help="tokens in the KV cache before the timed calls")
    ap.add_argument("--max", type=int, default=17, help="the longest call timed")
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    common.warn_if_busy()
    import llama_cpp
    from llama_cpp import _internals

    path = Path(args.model) if args.model.endswith(".gguf") else common.bundled_model(args.model)
    llm = llama_cpp.Llama(
        str(path), n_ctx=2048, n_batch=512, n_threads=args.threads, flash_attn=True, logits_all=False, verbose=False
    )
    tokens = llm.tokenize(("The quick brown fox jumps over the lazy dog. " * 200).encode())
    tokens = tokens[: args.prompt + args.max]
    llm.eval(tokens[: args.prompt])
    ctx = llm._ctx
    batch = _internals.LlamaBatch(n_tokens=args.max, embd=0, n_seq_max=1)

    def seconds(n: int, reps: int) -> float:
        times = []
        for _ in range(reps):
            batch.set_batch(tokens[args.prompt : args.prompt + n], args.prompt, n > 1)
            t0 = time.perf_counter()
            ctx.decode(batch)
            times.append(time.perf_counter() - t0)
            ctx.kv_cache_seq_rm(0, args.prompt, -1)
        return statistics.median(times)

    seconds(1, 5)  # warm-up
    # single-token calls interleaved with the others, so a drift of the machine moves both
    ratio = {1: 1.0}
    for n in range(2, args.max + 1):
        ratio[n] = seconds(n, args.reps) / seconds(1, args.reps)
    print(f"{path.name}, prompt {args.prompt}: one token {1000 * seconds(1, args.reps):.2f} ms")
    print("cost of a call of n tokens / one token:  " + "  ".join(f"{n}:{r:.2f}" for n, r in ratio.items()))
    for p in (0.7, 0.8, 0.9, 0.95, 1.0):
        gain, k = max(((1 + expected_accepted(p, k)) / ratio[k + 1], k) for k in range(1, args.max))
        print(f"  p = {p:.2f}: best draft {k:2d} tokens, at most {gain:.2f}x plain decoding")


if __name__ == "__main__":
    main()
