"""Benchmark: real generation speed of the bundled models against the planner's prediction.

    python bench/plan_speed.py [--repeats 3] [--tokens 128] [--profile NAME] [--json]
    python bench/plan_speed.py --calibrated [--types f16,q8_0,q4_k_m] [--repeats 3]

--calibrated: the goal of `edge bench`. Each bundled model is requantized to --types with
`edge-quantize convert MODEL.gguf --to T --no-eval` (once, kept in the bench work folder); then, in
a private EDGE_HOME, `edge bench` measures the bundled file as it ships (SmolLM2 Q4_1, Gemma-3
Q4_K_M) and records the calibration; for each type the planner's prediction from that calibration
(`SpeedModel`, the same one `edge-quantize plan` uses) is compared with our engine's measured
generation speed (same runner as below). Goal: |predicted/measured - 1| <= 15 % for every row.

For each bundled model (SmolLM2-135M Q4_1, Gemma-3-270M Q4_K_M):
1. predicted: `profiles.plan.planner.estimate(...).tokens_per_s` for the file as it is (AS_IS) on the profile
   `edge profile` detects here (or --profile): bandwidth x the profile's efficiency / bytes read per
   token (weights + the KV cache at 512 tokens);
2. ours: a child process opens the model the way `edge serve` does (edge.engine.open_engine, the
   profile's threads) and generates --tokens greedy tokens (ignore_eos) after one warm-up run,
   --repeats times; generation t/s from the engine's own eval time, median of the repeats;
3. anchor: `llama-bench -p 0 -n TOKENS -r REPEATS -t THREADS` (tg128), same threads.
The table gives ours/llama-bench and ours/planner; the efficiency factor is measured / (bandwidth /
bytes per token), the figure the profile's `efficiency` should hold on this machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from common import Row, console

ANCHORS = ["llama-bench", "planner"]
MODELS = ("smollm2", "gemma3")

_GENERATE = """
import asyncio, json, sys
from pathlib import Path
from edge.engine import open_engine
from edge.engine.base import Finish, SamplingParams

path, threads, tokens, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
engine = open_engine(Path(path), name="bench", n_ctx=2048, n_parallel=1, n_threads=threads)
prompt = engine.tokenize("Once upon a time")
params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)

async def once():
    return [e async for e in engine.generate(prompt, params, stream=False) if isinstance(e, Finish)][0]

asyncio.run(once())  # warm-up: page the weights in
speeds = []
for _ in range(repeats):
    f = asyncio.run(once())
    speeds.append(f.completion_tokens / (f.eval_ns / 1e9))
print(json.dumps(speeds))
engine.close()
"""


def ours(path: Path, threads: int, tokens: int, repeats: int) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", _GENERATE, str(path), str(threads), str(tokens), str(repeats)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode != 0:
        raise SystemExit(f"edge engine run failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def llama_bench(path: Path, threads: int, tokens: int, repeats: int) -> float:
    cmd = [
        common.anchor_binary("llama-bench"),
        "-m",
        path,
        "-p",
        "0",
        "-n",
        str(tokens),
        "-r",
        str(repeats),
        "-t",
        str(threads),
        "-o",
        "json",
    ]
    result = common.check(common.run_measured(cmd), "llama-bench")
    start = result.output.index("[")  # llama-bench logs before its JSON array
    return float(json.loads(result.output[start:])[0]["avg_ts"])


def predicted(path: Path, profile):
    from profiles.plan.planner import SPEED_AT_TOKENS, estimate
    from profiles.plan.shape import read_model_shape

    est = estimate(read_model_shape(path), "AS_IS", 2048, profile)
    ceiling = est.tokens_per_s / profile.runtime.efficiency  # bandwidth / bytes read per token
    return est.tokens_per_s, ceiling, SPEED_AT_TOKENS


def bench_model(key: str, profile, threads: int, tokens: int, repeats: int) -> tuple[Row, dict]:
    path = common.bundled_model(key)
    console.rule(f"{key}: {path.name}")
    speeds = ours(path, threads, tokens, repeats)
    measured = common.median(speeds)
    console.log(f"  ours {', '.join(f'{s:.1f}' for s in speeds)} t/s (median {measured:.1f})")
    anchor = llama_bench(path, threads, tokens, repeats)
    console.log(f"  llama-bench tg{tokens}: {anchor:.1f} t/s")
    pred, ceiling, at = predicted(path, profile)
    factor = measured / ceiling
    console.log(f"  planner {pred:.1f} t/s (ceiling {ceiling:.1f} t/s x efficiency {profile.runtime.efficiency})")
    row = Row(
        f"{key} generation (tg{tokens})",
        "t/s",
        measured,
        {"llama-bench": anchor, "planner": pred},
        "",
        f"efficiency factor measured/ceiling = {factor:.3f} (profile {profile.name} holds "
        f"{profile.runtime.efficiency}); llama-bench's own: {anchor / ceiling:.3f}; ceiling = "
        f"{profile.memory.bandwidth_gbs} GB/s / bytes per token at {at} tokens of context",
    )
    return row, {
        "ours_tps": speeds,
        "llama_bench_tps": anchor,
        "predicted_tps": pred,
        "ceiling_tps": ceiling,
        "efficiency_factor": factor,
        "llama_bench_efficiency_factor": anchor / ceiling,
    }


def requantized(key: str, src: Path, qtype: str) -> Path:
    """`edge-quantize convert SRC --to QTYPE --no-eval`, made once in the bench work folder."""
    out_dir = common.work_dir() / "plan_speed"
    out = out_dir / f"{key}-{qtype.lower()}.gguf"
    if not out.is_file():
        cmd = [common.venv_script("edge-quantize"), "convert", src, "--to", qtype, "-o", out_dir, "--name", key]
        common.check(common.run_measured([*cmd, "--no-eval", "-q"]), f"edge-quantize convert --to {qtype}")
    return out


def edge_bench(path: Path, home: Path, threads: int, tokens: int, repeats: int, profile: str | None) -> dict:
    """`edge bench FILE` in a private EDGE_HOME: records the calibration there; its JSON figures."""
    import os

    cmd = [common.venv_script("edge"), "bench", str(path), "--threads", str(threads), "--tokens", str(tokens)]
    cmd += ["--repeats", str(repeats), "--port", str(common.free_port()), "--json"]
    cmd += ["--profile", profile] if profile else []
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, EDGE_HOME=str(home)), timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"edge bench failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def calibrated_prediction(path: Path, home: Path, profile) -> tuple[float, str]:
    from profiles import calibration
    from profiles.plan.planner import SpeedModel, estimate
    from profiles.plan.shape import read_model_shape

    records = calibration.load(calibration.calibration_path(home))
    model = SpeedModel.for_profile(records, profile.name)
    est = estimate(read_model_shape(path), "AS_IS", 2048, profile, speed_model=model)
    return est.tokens_per_s, est.speed_basis


def calibrated(args, profile, threads: int) -> int:
    import tempfile

    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    rows, extra = [], {}
    with tempfile.TemporaryDirectory(prefix="edge-plan-speed-") as tmp:
        home = Path(tmp)
        files = {key: {t: requantized(key, common.bundled_model(key), t) for t in types} for key in MODELS}
        for key in MODELS:
            figures = edge_bench(common.bundled_model(key), home, threads, args.tokens, args.repeats, args.profile)
            console.log(f"edge bench {key} {figures['type']}: tg {figures['tg_median']:.1f} t/s (calibration)")
        for key in MODELS:
            for qtype, path in files[key].items():
                measured = common.median(ours(path, threads, args.tokens, args.repeats))
                predicted, basis = calibrated_prediction(path, home, profile)
                error = predicted / measured - 1
                console.log(
                    f"  {key} {qtype}: measured {measured:.1f}, predicted {predicted:.1f} ({basis}) {error:+.1%}"
                )
                rows.append(
                    Row(
                        f"{key} {qtype} generation (tg{args.tokens})",
                        "t/s",
                        measured,
                        {"planner": predicted},
                        "|planner/ours - 1| <= 0.15",
                        f"{basis}; error {error:+.1%}",
                    )
                )
                extra[f"{key} {qtype}"] = {"measured": measured, "predicted": predicted, "error": error}
    if args.json:
        print(common.rows_json(rows, ["planner"], {**extra, "profile": profile.name, "threads": threads}))
    else:
        common.print_table(f"calibrated planner vs measured ({profile.name}, {threads} threads)", rows, ["planner"])
    return 0 if all(abs(v["error"]) <= 0.15 for v in extra.values()) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calibrated", action="store_true", help="edge bench, then predicted vs measured per type")
    ap.add_argument("--types", default="f16,q8_0,q4_k_m", help="types compared with --calibrated")
    ap.add_argument("--repeats", "-n", type=int, default=3, help="timed runs per model (default 3)")
    ap.add_argument("--tokens", type=int, default=128, help="generated tokens per run (default 128)")
    ap.add_argument("--profile", help="a profile name instead of the detected one")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    args = ap.parse_args(argv)
    common.exit_cleanly_on_sigterm()
    from profiles.detect import detect
    from profiles.profile import get_profile

    found = detect(Path("/"))
    profile = get_profile(args.profile) if args.profile else found.profile
    threads = profile.runtime.threads if args.profile else found.threads
    console.log(f"profile {profile.name} ({'--profile' if args.profile else 'detected'}), {threads} threads")
    if args.calibrated:
        return calibrated(args, profile, threads)
    load = [common.warn_if_busy()]
    rows, extra = [], {}
    for key in MODELS:
        row, figures = bench_model(key, profile, threads, args.tokens, args.repeats)
        rows.append(row)
        extra[key] = figures
    load.append(common.warn_if_busy())
    if args.json:
        print(
            common.rows_json(
                rows, ANCHORS, {**extra, "profile": profile.name, "threads": threads, "load_average": load}
            )
        )
    else:
        common.print_table(f"generation speed vs the planner ({profile.name}, {threads} threads)", rows, ANCHORS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
