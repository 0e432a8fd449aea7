"""Does llama.cpp give a token the same logits alone as in a batch? (Why speculation's output can fork.)

Speculative decoding verifies a draft in one multi-token decode; plain decoding feeds one token at a
time. Greedy outputs agree only if both give the same logits. This evaluates a prompt of --prompt
tokens, then the next 8 tokens one at a time in one context and as one batch in another (llama-cpp-
python alone, no edge code), and prints the largest logit difference at each of the 8 positions.

    python bench/batch_logits.py [--model smollm2|gemma3|FILE.gguf] [--prompt 100] [--flash-attn 1] [--repack 1]

Measured on an AMD EPYC (2026-12-05), flash attention on: SmolLM2 Q4_1 identical with a 100-token
prompt, different with 700 (ggml's split-KV flash attention for a single query from 512 KV cells on);
Gemma-3 Q4_K_M different either way (its Q5_0/Q8_0 tensors go through llamafile's tinyBLAS from 2
tokens on, its Q4_K through repacked kernels; --repack 0 leaves the first position equal, not the rest).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2, gemma3 (the bundled models) or a GGUF file")
    ap.add_argument("--prompt", type=int, default=100, help="prompt tokens before the 8 compared")
    ap.add_argument("--flash-attn", type=int, default=1, choices=(0, 1))
    ap.add_argument("--repack", type=int, default=1, choices=(0, 1), help="llama.cpp's repacked weights (extra bufts)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import llama_cpp
    import llama_cpp.llama as high

    path = Path(args.model) if args.model.endswith(".gguf") else common.bundled_model(args.model)
    defaults = llama_cpp.llama_model_default_params

    def params():
        p = defaults()
        p.use_extra_bufts = bool(args.repack)
        return p

    high.llama_cpp.llama_model_default_params = params  # Llama() builds its model params from this
    kw = dict(n_ctx=2048, n_batch=512, n_ubatch=512, n_threads=args.threads, logits_all=True, verbose=False)
    one, batch = (llama_cpp.Llama(str(path), flash_attn=bool(args.flash_attn), **kw) for _ in range(2))
    text = ("The quick brown fox jumps over the lazy dog. " * 400).encode()
    tokens = one.tokenize(text)[: args.prompt + 8]
    n = args.prompt
    one.eval(tokens[:n])
    batch.eval(tokens[:n])
    for t in tokens[n:]:
        one.eval([t])
    batch.eval(tokens[n:])
    diff = np.abs(np.array(one.scores[n : n + 8]) - np.array(batch.scores[n : n + 8])).max(axis=1)
    print(
        f"{path.name}: prompt {n}, flash attention {args.flash_attn}, repack {args.repack}: "
        "max |logit alone - logit in a batch of 8| per position: " + " ".join(f"{d:.4f}" for d in diff)
    )


if __name__ == "__main__":
    main()
