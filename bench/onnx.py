"""ONNX speed: our int4 SmolLM2 through edge's ONNX backend vs onnxruntime-genai's builder + runtime.

    .venv/bin/python bench/onnx.py [--tokens 128] [--rounds 3] [--threads 2]

Both sides get the same checkpoint (the bundled SmolLM2-135M-Instruct GGUF unpacked to HF by
edge-quantize), both int4 (block 32, symmetric, accuracy level 4: onnxruntime-genai's CPU default),
both greedy with end-of-sequence ignored, same prompt, same thread count. onnxruntime-genai's
builder needs transformers 5, so it lives in its own venv (created here on first use, $GENAI_VENV,
default /tmp/genai-venv; torch is borrowed from the project's venv through a .pth file instead of
downloading it again). Runs are separate processes, interleaved A/B/A/B; tokens/s counts decode
steps after the first token (prompt evaluation excluded). Prints each run, the medians and the
ratio ours / genai (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# this file is named onnx.py: keep its folder off the path, or it would shadow the onnx package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
PROMPT = "Write a short story about a robot who learns to paint."

OURS = (
    r"""
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[4])
from edge.engine import open_engine
from edge.engine.base import Finish, SamplingParams
folder, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
engine = open_engine(folder, name="bench", n_ctx=1024, n_threads=threads)
prompt = engine.tokenize(%r)
async def run():
    async for ev in engine.generate(prompt, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)):
        if isinstance(ev, Finish):
            return ev
ev = asyncio.run(run())
print(json.dumps({"tokens": ev.completion_tokens, "tps": (ev.completion_tokens - 1) / (ev.eval_ns / 1e9)}))
engine.close()
"""
    % PROMPT
)

GENAI = (
    r"""
import json, sys, time
import onnxruntime_genai as og
folder, n = sys.argv[1], int(sys.argv[2])
model = og.Model(folder)
tok = og.Tokenizer(model)
params = og.GeneratorParams(model)
params.set_search_options(do_sample=False, max_length=1024, min_length=1024)
gen = og.Generator(model, params)
gen.append_tokens(tok.encode(%r))
gen.generate_next_token()          # the first token: prompt evaluation
t = time.perf_counter()
for _ in range(n - 1):
    gen.generate_next_token()
dt = time.perf_counter() - t
print(json.dumps({"tokens": n, "tps": (n - 1) / dt}))
"""
    % PROMPT
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def genai_python(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        log(f"creating {venv} (onnxruntime-genai, transformers 5) ...")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "onnxruntime-genai", "transformers>=5", "onnx", "onnx_ir"],
            check=True,
        )
        site = subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        (Path(site) / "zz_torch_from_edge.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py


def prepare(work: Path, venv: Path, threads: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT))
    from edge.store import bundled_models, materialize

    work.mkdir(parents=True, exist_ok=True)
    hf, ours, genai = work / "smollm2-hf", work / "smollm2-onnx-int4_bs32", work / "genai-int4"
    if not hf.exists():
        from quantize.unpack import unpack

        entry = next(e for e in bundled_models(work / "cache") if e.name == "smollm2:135m-q4_1")
        unpack(materialize(entry).path, hf, quiet=True)
    if not ours.exists():
        from quantize.onnx.export import export_onnx

        export_onnx(hf, ["onnx:int4"], work, name="smollm2", quiet=True)
    if not genai.exists():
        py = genai_python(venv)
        subprocess.run(
            [
                str(py),
                "-m",
                "onnxruntime_genai.models.builder",
                "-i",
                str(hf),
                "-o",
                str(genai),
                "-p",
                "int4",
                "-e",
                "cpu",
                "-c",
                str(work / "genai-cache"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    cfg_path = genai / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return ours, genai


def run(cmd: list[str]) -> float:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return float(json.loads(out)["tps"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edge-bench-onnx"))
    ap.add_argument("--genai-venv", type=Path, default=Path("/tmp/genai-venv"))
    args = ap.parse_args()
    ours, genai = prepare(args.work, args.genai_venv, args.threads)
    gpy = genai_python(args.genai_venv)
    ours_cmd = [sys.executable, "-c", OURS, str(ours), str(args.tokens), str(args.threads), str(ROOT)]
    genai_cmd = [str(gpy), "-c", GENAI, str(genai), str(args.tokens)]
    a, b = [], []
    for i in range(args.rounds):
        a.append(run(ours_cmd))
        b.append(run(genai_cmd))
        log(f"round {i + 1}: edge onnx {a[-1]:.1f} t/s, onnxruntime-genai {b[-1]:.1f} t/s")
    ma, mb = statistics.median(a), statistics.median(b)
    print(
        f"SmolLM2-135M int4, {args.tokens} tokens, {args.threads} threads, median of {args.rounds}: "
        f"edge onnx {ma:.1f} t/s, onnxruntime-genai {mb:.1f} t/s, ratio {ma / mb:.2f}x (goal >= 0.9x)"
    )


if __name__ == "__main__":
    main()
