"""Benchmark: LoRA adapters, ours against llama.cpp's own tools, in one run.

    flock /work/tools/bench.lock python bench/lora.py [--rounds N]

Setup (cached in the work folder): the bundled SmolLM2-135M Q4_1 unpacked to a Hugging Face folder,
and a random PEFT LoRA on it (r 8 on the seven projections of every block).
  (a) conversion: `edge-quantize adapter` vs `convert_lora_to_gguf.py --outtype f32` on the same
      PEFT folder and base folder: wall time and peak RSS per process, interleaved A B A B;
  (b) generation: 128-token greedy completions (one client, 2 threads) from `edge serve` naming
      `smollm2:135m-q4_1+desk` vs `llama-server -m <Q4_1> --lora desk.gguf`, the same adapter file;
      and each on the base alone (ours: the same server without `+desk`; llama-server: a second one
      without `--lora`), which shows what applying the adapter costs llama.cpp itself. Requests
      alternate between the servers, all loaded. Ours runs without speculative decoding by default
      (`--spec off`), so both servers do the same decodes: the prompt's output under this random
      adapter repeats one token, which prompt-lookup drafts would otherwise speed up far beyond
      what the adapter path costs.
Ratios are on medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from common import console, median

THREADS = 2
N_TOKENS = 128
PROMPT = "Count from 1 to 500, separated by commas: 1, 2, 3,"
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


def _start(cmd: list, env: dict, url: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    common.stop(proc)
    raise SystemExit(f"{cmd[0]} not ready (log {log})")


def _tps(url: str, model: str) -> float:
    body = {"model": model, "prompt": PROMPT, "max_tokens": N_TOKENS, "temperature": 0, "ignore_eos": True}
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/completions", json=body, timeout=300)
    dt = time.perf_counter() - t0
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"] / dt


def bench_serve(base: Path, adapter: Path, work: Path, rounds: int, spec: str) -> None:
    home = work / "lora-home"
    shutil.rmtree(home, ignore_errors=True)
    (home / "adapters").mkdir(parents=True)
    shutil.copy(adapter, home / "adapters" / "desk.gguf")
    p_ours, p_ref, p_plain = common.free_port(), common.free_port(), common.free_port()
    ours_env = dict(os.environ, EDGE_HOME=str(home), EDGE_SPEC=spec)
    ours_cmd = [common.venv_script("edge"), "serve", "--port", p_ours, "--threads", THREADS, "--ctx", 2048]
    ref_cmd = [common.anchor_binary("llama-server"), "-m", base, "--lora", home / "adapters" / "desk.gguf"]
    common_args = ["-t", THREADS, "-c", 2048, "-np", 1, "--no-webui", "--host", "127.0.0.1"]
    ref_cmd += ["--port", p_ref, *common_args]
    plain_cmd = [common.anchor_binary("llama-server"), "-m", base, "--port", p_plain, *common_args]
    procs = []
    try:
        procs.append(_start(ours_cmd, ours_env, f"http://127.0.0.1:{p_ours}", work / "lora-ours.log"))
        procs.append(_start(ref_cmd, dict(os.environ), f"http://127.0.0.1:{p_ref}", work / "lora-ref.log"))
        procs.append(_start(plain_cmd, dict(os.environ), f"http://127.0.0.1:{p_plain}", work / "lora-plain.log"))
        u_o, u_r, u_p = (f"http://127.0.0.1:{p}" for p in (p_ours, p_ref, p_plain))
        runs = {
            "ours+adapter": (u_o, "smollm2:135m-q4_1+desk"),
            "llama-server --lora": (u_r, "x"),
            "ours base": (u_o, "smollm2:135m-q4_1"),
            "llama-server base": (u_p, "x"),
        }
        for url, model in runs.values():
            _tps(url, model)  # warm-up
        got: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(rounds):
            for k, (url, model) in runs.items():
                got[k].append(_tps(url, model))
    finally:
        for proc in procs:
            common.stop(proc)
    a, r, b, p = (median(got[k]) for k in runs)
    console.print(
        f"(b) tokens/s, {N_TOKENS}-token completions, median of {rounds} (ours with speculation {spec}): "
        f"ours with adapter {a:.1f}, llama-server --lora {r:.1f} -> ours/llama-server {a / r:.2f}; "
        f"base alone: ours {b:.1f}, llama-server {p:.1f} ({b / p:.2f}); the adapter's own cost: "
        f"ours {a / b:.2f}x, llama-server {r / p:.2f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--convert-rounds", type=int, default=3)
    ap.add_argument("--spec", choices=["off", "on"], default="off", help="ours with speculative decoding (EDGE_SPEC)")
    args = ap.parse_args()
    common.warn_if_busy()
    work = common.work_dir()
    base, hf, peft_dir = setup(work)
    adapter = bench_convert(hf, peft_dir, work, args.convert_rounds)
    bench_serve(base, adapter, work, args.rounds, args.spec)


if __name__ == "__main__":
    main()
