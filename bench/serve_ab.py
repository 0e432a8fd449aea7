"""A focused A/B of one serve measure, ours against llama-server, many samples, interleaved.

    python bench/serve_ab.py tps    [--model gemma3] [--rounds 6]   # 128-token completions, 1 client
    python bench/serve_ab.py cached [--model smollm2] [--rounds 6]  # TTFT once a system prompt is cached
    python bench/serve_ab.py first  [--model smollm2] [--rounds 6]  # TTFT the first time a system prompt is seen
    python bench/serve_ab.py tps --against-revision 9528ecc           # ours against ours at an older commit

`bench/serve.py` measures everything with a few samples per server process; on a noisy 2-vCPU VM one
of its ratios can land a few percent on either side of a goal from run to run. This settles one
measure: a fresh server per round (order alternating), 4 to 6 samples each, the ratio of the medians
over all samples, and the median of the per-round ratios (the two servers of a round run back to
back, so that one is immune to the host drifting between rounds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import client
import common
import servers
from common import console, median
from serve import CTX, N_TOKENS, QUESTIONS, count_prompt, system_prompt


def samples(measure: str, run: servers.Running, r: int) -> list[float]:
    client.complete(run, count_prompt(3), 8)  # warm up, as bench/serve.py does before these
    if measure == "tps":
        return [client.complete(run, count_prompt(10 + 7 * i), N_TOKENS).wall_tps for i in range(4)]
    out = []
    for j in range(2 if measure == "cached" else 5):
        sys_p = system_prompt(7000 + 10 * r + j)
        first = client.stream_first_token(run, sys_p + QUESTIONS[0]).ttft * 1000
        if measure == "first":
            out.append(first)
        else:
            out += [client.stream_first_token(run, sys_p + q).ttft * 1000 for q in QUESTIONS[1:]]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("measure", choices=["tps", "cached", "first"])
    ap.add_argument("--model", choices=["smollm2", "gemma3"], default="smollm2")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument(
        "--against-revision", metavar="REV", help="compare with `edge serve` at this git commit instead of llama-server"
    )
    args = ap.parse_args(argv)
    common.exit_cleanly_on_sigterm()
    anchor_kind = servers.add_revision(args.against_revision) if args.against_revision else "llama-server"
    KINDS = ["ours", anchor_kind]
    missing = [k for k in KINDS if k not in servers.available_kinds()]
    if missing:
        raise SystemExit(f"cannot run {', '.join(missing)}")
    model = common.bundled_model(args.model)
    load = [common.warn_if_busy()]
    got: dict[str, list[float]] = {k: [] for k in KINDS}
    paired = []  # per round: ours / llama-server, run back to back, so the host's drift cancels
    for r in range(args.rounds):
        this = {}
        for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
            run = servers.start(kind, model, parallel=1, ctx=CTX)
            try:
                xs = samples(args.measure, run, r)
            finally:
                common.stop(run.proc)
            got[kind] += xs
            this[kind] = median(xs)
            console.log(f"  {kind:13s} round {r + 1}: " + " ".join(f"{x:.1f}" for x in xs))
        paired.append(this["ours"] / this[anchor_kind])
    load.append(common.warn_if_busy())
    unit = "t/s" if args.measure == "tps" else "ms"
    ours, anchor = median(got["ours"]), median(got[anchor_kind])
    console.print(
        f"{args.model} {args.measure}: ours {ours:.1f} {unit} vs {anchor_kind} {anchor:.1f} {unit} "
        f"= {ours / anchor:.3f}x (medians of {len(got['ours'])} samples each, {args.rounds} rounds); "
        f"median of the per-round ratios {median(paired):.3f}x "
        f"({' '.join(f'{p:.2f}' for p in paired)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
