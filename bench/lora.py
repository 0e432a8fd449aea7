"""Benchmark: LoRA adapters, ours against llama.cpp's own tools, in one run.

    python bench/lora.py [--rounds 15] [--convert-rounds 3] [--spec off|on] [--seed N]

Setup (cached in the work folder): the bundled SmolLM2-135M Q4_1 unpacked to a Hugging Face folder,
and a random PEFT LoRA on it (r 8 on the seven projections of every block).
  (a) conversion: `edge-quantize adapter` vs `convert_lora_to_gguf.py --outtype f32` on the same
      PEFT folder and base folder: wall time and peak RSS per process, interleaved A B A B;
  (b) generation, equal work: streamed greedy /v1/completions of exactly 128 tokens (ignore_eos; a
      server that stops early fails the run), one client, 2 threads, one slot, ctx 2048 everywhere,
      from `edge serve` naming `smollm2:135m-q4_1+desk` vs `llama-server -m <Q4_1> --lora desk.gguf`
      (the same adapter file), and each on the base alone (ours: the same server without `+desk`;
      llama-server: a second one without `--lora`), which shows what the adapter costs llama.cpp
      itself. Each round sends one new prompt to all four, in an order rotated per round, so no
      server reuses a cached prompt (ours cannot share KV across adapters; llama-server's two
      servers each would). The figure is decode tokens/s = (tokens - 1) / (last chunk - first
      chunk), on the client's clock; time to first token and wall tokens/s are printed beside it,
      and llama-server's own `timings`. Ours runs without speculative decoding (`--spec off`), so
      both do the same decodes: under this random adapter the output repeats one token, which
      prompt-lookup drafts would speed up far beyond what the adapter path costs.
Ratios are on medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import client as bodies
import common
import servers
from common import console, median

THREADS = 2
CTX = 2048
N_TOKENS = 128
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def setup(work: Path) -> tuple[Path, Path, Path]:
    """(base GGUF, HF folder, PEFT folder)."""
    base = common.bundled_model("smollm2")
    hf, peft_dir = work / "smollm2-hf", work / "smollm2-peft"
    if not (hf / "config.json").is_file():
        subprocess.run([common.venv_script("edge-quantize"), "unpack", base, "-o", hf, "--force", "-q"], check=True)
    if not (peft_dir / "adapter_config.json").is_file():
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
        lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LINEARS, init_lora_weights=False))
        lora.save_pretrained(peft_dir, safe_serialization=True)
    return base, hf, peft_dir


def bench_convert(hf: Path, peft_dir: Path, work: Path, rounds: int) -> Path:
    llama = common.llama_cpp_source()
    ours_out, ref_out = work / "desk.gguf", work / "desk-ref.gguf"
    ours_cmd = [common.venv_script("edge-quantize"), "adapter", peft_dir, "--base", hf, "-o", ours_out, "--force", "-q"]
    ref_cmd = [sys.executable, llama / "convert_lora_to_gguf.py", peft_dir, "--base", hf, "--outtype", "f32"]
    ref_cmd += ["--outfile", ref_out]
    env = dict(os.environ, PYTHONPATH=str(llama / "gguf-py"), HF_HUB_OFFLINE="1")
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    rss: dict[str, list[float]] = {"ours": [], "ref": []}
    for _ in range(rounds):
        for name, cmd, e in (("ours", ours_cmd, None), ("ref", ref_cmd, env)):
            r = common.check(common.run_measured(cmd, env=e), name)
            times[name].append(r.seconds)
            rss[name].append(r.peak_rss_mb)
    t_o, t_r, m_o, m_r = (median(times["ours"]), median(times["ref"]), median(rss["ours"]), median(rss["ref"]))
    console.print(
        f"(a) conversion, median of {rounds}: edge-quantize adapter {t_o:.2f} s / {m_o:.0f} MB, "
        f"convert_lora_to_gguf.py {t_r:.2f} s / {m_r:.0f} MB -> time ratio {t_o / t_r:.2f}, memory ratio {m_o / m_r:.2f}"
    )
    return ours_out


@dataclass
class _Fixed(servers.ServerKind):
    """A server started from a fixed command line; servers.start adds the port."""

    argv: list = field(default_factory=list)

    def command(self, model, port, parallel, ctx):
        return [str(a) for a in self.argv] + ["--port", str(port)]


def _prompt(r: random.Random) -> str:
    """A new prompt each round (no server reuses an earlier prompt's KV); the token count is pinned anyway."""
    n = r.randint(10, 900)
    return f"Count from {n} to {n + 500}, separated by commas: {n}, {n + 1}, {n + 2},"


def bench_serve(base: Path, adapter: Path, work: Path, rounds: int, spec: str, seed: int) -> dict:
    home = work / "lora-home"
    shutil.rmtree(home, ignore_errors=True)
    (home / "adapters").mkdir(parents=True)
    shutil.copy(adapter, home / "adapters" / "desk.gguf")
    pinned = {"ignore_eos": True}
    ours_argv = [common.venv_script("edge"), "serve", "--host", "127.0.0.1", "--threads", THREADS, "--ctx", CTX]
    ours_argv += ["--parallel", 1, "--spec" if spec == "on" else "--no-spec"]
    llama = [common.anchor_binary("llama-server"), "-m", base, "-t", THREADS, "-c", CTX, "-np", 1, "--no-webui"]
    llama += ["--host", "127.0.0.1"]
    kinds = {
        "ours": _Fixed("ours", "/health", pinned, argv=ours_argv),
        "llama-server --lora": _Fixed("llama-server-lora", "/health", pinned, argv=[*llama, "--lora", adapter]),
        "llama-server base": _Fixed("llama-server-base", "/health", pinned, argv=llama),
    }
    started: list[servers.Running] = []
    try:
        for kind in kinds.values():
            env = {"EDGE_HOME": str(home)} if kind.name == "ours" else None
            started.append(servers.start(kind, base, ctx=CTX, env=env))
        ours, ref, plain = started
        runs = {
            "ours+adapter": dataclasses.replace(ours, model_id="smollm2:135m-q4_1+desk"),
            "llama-server --lora": ref,
            "ours base": dataclasses.replace(ours, model_id="smollm2:135m-q4_1"),
            "llama-server base": plain,
        }
        got: dict[str, list[bodies.Timed]] = {k: [] for k in runs}
        r = random.Random(seed)
        with httpx.Client(timeout=300) as client:
            for run in runs.values():
                bodies.stream_timed(run, _prompt(r), N_TOKENS, client)  # warm-up
            for rnd in range(rounds):
                prompt, k = _prompt(r), rnd % len(runs)
                for label in list(runs)[k:] + list(runs)[:k]:  # each server first in turn
                    got[label].append(bodies.stream_timed(runs[label], prompt, N_TOKENS, client))
                console.log(
                    f"round {rnd} decode t/s: " + ", ".join(f"{lb} {v[-1].decode_tps:.1f}" for lb, v in got.items())
                )
    finally:
        for run in started:
            common.stop(run.proc)
    return {
        lb: {
            "decode_tps": median([t.decode_tps for t in ts]),
            "ttft_ms": 1000 * median([t.ttft for t in ts]),
            "wall_tps": median([t.wall_tps for t in ts]),
            "server_tps": median([t.server_tps for t in ts]) if all(t.server_tps for t in ts) else None,
        }
        for lb, ts in got.items()
    }


def report(res: dict, rounds: int, spec: str) -> None:
    d = {lb: v["decode_tps"] for lb, v in res.items()}
    a, r, b, p = d["ours+adapter"], d["llama-server --lora"], d["ours base"], d["llama-server base"]
    console.print(
        f"(b) {N_TOKENS}-token streamed completions, a new prompt each round, median of {rounds} "
        f"(ours with speculation {spec}):"
    )
    for lb, v in res.items():
        own = f", server's own {v['server_tps']:.1f}" if v["server_tps"] else ""
        console.print(
            f"    {lb:20s} decode {v['decode_tps']:6.1f} t/s   first token {v['ttft_ms']:5.0f} ms   "
            f"wall {v['wall_tps']:6.1f} t/s{own}"
        )
    console.print(
        f"  decode, ours with adapter / llama-server --lora {a / r:.2f} (goal >= 0.97); base alone {b / p:.2f}; "
        f"the adapter's own cost: ours {a / b:.2f}x its base, llama-server {r / p:.2f}x"
    )
    w = {lb: v["wall_tps"] for lb, v in res.items()}
    console.print(
        f"  wall (prompt included), ours/llama-server: with adapter "
        f"{w['ours+adapter'] / w['llama-server --lora']:.2f}, base {w['ours base'] / w['llama-server base']:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--convert-rounds", type=int, default=3)
    ap.add_argument("--spec", choices=["off", "on"], default="off", help="ours with speculative decoding")
    ap.add_argument("--seed", type=int, default=None, help="prompts' random seed (default: the clock)")
    args = ap.parse_args()
    common.warn_if_busy()
    work = common.work_dir()
    base, hf, peft_dir = setup(work)
    adapter = bench_convert(hf, peft_dir, work, args.convert_rounds)
    seed = args.seed if args.seed is not None else time.time_ns() % 1_000_000
    console.log(f"prompt seed {seed}")
    report(bench_serve(base, adapter, work, args.rounds, args.spec, seed), args.rounds, args.spec)


if __name__ == "__main__":
    main()
