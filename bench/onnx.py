"""ONNX quality and speed: our int8 / int4 / calibrated int4 vs onnxruntime-genai's int4 (and its int8).

    .venv/bin/python bench/onnx.py [--model smollm2|gemma3] [--types onnx:int8,...] [--tokens 128]
        [--rounds 3] [--threads 2] [--chunks 14] [--genai int4,int8] [--prepare | --no-speed | --no-quality]

Every side gets the same checkpoint (the bundled SmolLM2-135M-Instruct Q4_1 or Gemma-3-270M Q4_K_M
GGUF unpacked to HF by edge-quantize; that checkpoint's F32 GGUF is the reference). Quality: KL
divergence and same-top-token % against the F32 GGUF on the ladder's text and chunks
(quantize.eval, docs/ladder.md), for GGUF Q8_0 / Q4_0, our ONNX types (`--types`, by default
onnx:int8, onnx:int4 (data-free scale search, output projection at 8 bits), onnx:int4_head4 and
onnx:int4_head4_gptq (every weight at 4 bits, as genai's int4), onnx:int4_awq and onnx:int4_gptq, the calibrated ones on
--calib-text, by default licence texts other than the evaluation's GPL-3), and onnxruntime-genai's
int4 folder (its model.onnx run chunk by chunk in onnxruntime). Speed: every ONNX type and
onnxruntime-genai's int4 (block 32, symmetric, accuracy level 4: its CPU default), greedy with
end-of-sequence ignored, same prompt, same thread count. `--prepare` builds every file and stops
(run it under tools/heavy); `--no-speed` measures quality only (CPU-heavy, tools/heavy);
`--no-quality` measures speed only (tools/quiet). onnxruntime-genai's
builder needs transformers 5, so it lives in its own venv (created here on first use, $GENAI_VENV,
default /tmp/genai-venv; torch is borrowed from the project's venv through a .pth file instead of
downloading it again). Runs are separate processes, interleaved A/B/A/B; tokens/s counts decode
steps after the first token (prompt evaluation excluded). Prints each run, the medians and the
ratio of each of ours / genai (goal >= 0.9), then the quality table. `--genai int4,int8` also builds and
measures onnxruntime-genai's int8 (8-bit MatMulNBits): what its own builder's int8 costs against its int4
on this machine, and our int8 against it.
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
OURS_TYPES = ("onnx:int8", "onnx:int4", "onnx:int4_head4", "onnx:int4_awq", "onnx:int4_gptq", "onnx:int4_head4_gptq")
MODELS = {"smollm2": ("smollm2:135m-q4_1", "SmolLM2-135M"), "gemma3": ("gemma3:270m-q4_k_m", "Gemma-3-270M")}
CALIB_LICENCES = ("Apache-2.0", "MPL-2.0", "CC0-1.0", "Artistic")  # not the evaluation's GPL-3

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


# onnxruntime-genai's builder (0.18) reads Gemma-3's RoPE from transformers 4's flat config fields
# (rope_parameters["rope_type"], rope_theta, rope_local_base_freq); transformers 5 nests them per
# layer type ({"full_attention": {...}, "sliding_attention": {...}}), and the builder stops with
# KeyError 'rope_type' before writing anything. The builder runs with the config's own values put
# back where it looks for them (global RoPE flat, the sliding layers' theta as rope_local_base_freq).
GENAI_BUILD = r"""
import runpy, sys
import transformers
load = transformers.AutoConfig.from_pretrained
def flat_rope(*args, **kwargs):
    config = load(*args, **kwargs)
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope:
        config.rope_parameters = dict(rope["full_attention"])
        config.rope_theta = config.rope_parameters["rope_theta"]
        if "sliding_attention" in rope:
            config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
    return config
transformers.AutoConfig.from_pretrained = flat_rope
sys.argv[0] = "builder"
runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
"""


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


def prepare(
    model: str,
    types: list[str],
    work: Path,
    venv: Path,
    threads: int,
    calib_text: Path | None,
    genai_precisions: tuple[str, ...] = ("int4",),
) -> dict[str, Path]:
    """Every file measured: label -> GGUF file or ONNX folder (built once, kept in `work`)."""
    sys.path.insert(0, str(ROOT))
    from edge.store import bundled_models, materialize

    work.mkdir(parents=True, exist_ok=True)
    hf = work / f"{model}-hf"
    if not hf.exists():
        from quantize.unpack import unpack

        entry = next(e for e in bundled_models(work / "cache") if e.name == MODELS[model][0])
        unpack(materialize(entry).path, hf, quiet=True)
    files = {t: work / f"{model}-{t}.gguf" for t in ("f32", "q8_0", "q4_0")}
    if not all(p.exists() for p in files.values()):
        from quantize.convert import convert

        convert(hf, list(files), work, name=model, quiet=True, force=True)
    from quantize.onnx.calib import CalibOptions
    from quantize.onnx.export import export_onnx
    from quantize.onnx.quant import parse_onnx_type

    if calib_text is None:
        calib_text = work / "calib.txt"
        calib_text.write_bytes(b"".join(Path("/usr/share/common-licenses", n).read_bytes() for n in CALIB_LICENCES))
    for t in types:
        files[t] = work / f"{model}-onnx-{parse_onnx_type(t).name}"
    missing = [t for t in types if not files[t].exists()]
    if missing:  # one call: the calibrated types share one calibration pass
        export_onnx(hf, missing, work, name=model, quiet=True, calib=CalibOptions(calib_text))
    for precision in genai_precisions:
        files[f"genai {precision}"] = genai_folder(hf, work, venv, threads, precision)
    return files


def genai_folder(hf: Path, work: Path, venv: Path, threads: int, precision: str) -> Path:
    """onnxruntime-genai's builder's folder of `hf` at `precision` (built once, kept in `work`)."""
    genai = work / f"{hf.name.removesuffix('-hf')}-genai-{precision}"
    cfg_path = genai / "genai_config.json"
    if not cfg_path.exists():
        py = genai_python(venv)
        cmd = [str(py), "-c", GENAI_BUILD, "-i", str(hf), "-o", str(genai), "-p", precision, "-e", "cpu"]
        built = subprocess.run([*cmd, "-c", str(work / "genai-cache")], capture_output=True, text=True)
        if not cfg_path.exists():  # the builder can exit 0 after an error
            raise SystemExit(f"onnxruntime-genai's builder wrote no {cfg_path}:\n{built.stderr[-2000:]}")
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return genai


class GenaiLogits:
    """onnxruntime-genai's folder as a quantize.eval LogitsModel: its model.onnx run in onnxruntime,
    one chunk from position 0 as a first prompt (no generation loop needed for logits). GroupQueryAttention
    takes a prompt as the first one (no past) when its length equals the attention mask's (seqlens_k + 1 ==
    sequence length) and then reads nothing from the past buffers, but its sliding-window layers (Gemma-3,
    `sliding_window_cache`) refuse a buffer smaller than the window ("KV cache capacity (0) must be at
    least local_window_size (512)"): those layers get a zero buffer of max(window, chunk) positions (never
    read: the logits are the same with random values in it), the others an empty one as before. Checked
    on Gemma-3: bit-identical to onnxruntime-genai's own prompt logits (512 and 600 tokens), and its
    greedy decode from a chat prompt picks the argmax of these logits at every generated position."""

    def __init__(self, folder: Path, threads: int):
        import numpy as np
        import onnxruntime as ort

        self.np = np
        cfg = json.loads((folder / "genai_config.json").read_text())["model"]
        dec = cfg["decoder"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(str(folder / dec["filename"]), so, providers=["CPUExecutionProvider"])
        self.kv = (int(dec["num_key_value_heads"]), int(dec["head_size"]))
        sliding = dec.get("sliding_window") or {}
        self.window = int(sliding.get("window_size", 0))
        self.sliding = {int(i) for i in sliding.get("layers", [])} if self.window else set()
        self.n_vocab, self.n_params = int(cfg["vocab_size"]), 0

    def chunk_logits(self, tokens, first: int):
        np, n = self.np, len(tokens)
        feeds = {}
        for i in self.sess.get_inputs():
            if i.name == "input_ids":
                feeds[i.name] = np.asarray(tokens, np.int64)[None, :]  # (1, n)
            elif i.name == "attention_mask":
                feeds[i.name] = np.ones((1, n), np.int64)
            elif i.name == "position_ids":
                feeds[i.name] = np.arange(n, dtype=np.int64)[None, :]
            elif i.name.startswith("past_key_values"):
                dtype = np.float16 if "float16" in i.type else np.float32
                cap = max(self.window, n) if int(i.name.split(".")[1]) in self.sliding else 0
                feeds[i.name] = np.zeros((1, self.kv[0], cap, self.kv[1]), dtype)  # (1, n_kv, cap, head_size)
        [logits] = self.sess.run(["logits"], feeds)
        return logits[0, first:].astype(np.float32)  # (n - first, vocab)

    def close(self) -> None:
        del self.sess


def quality(files: dict[str, Path], chunks: int, threads: int) -> list[tuple[str, dict]]:
    from quantize.eval.ladder import EvalConfig, Evaluation
    from quantize.eval.text import default_eval_text

    rows = []
    config = EvalConfig(speed=False, max_chunks=chunks, n_threads=threads)
    with Evaluation(files["f32"], default_eval_text(), config) as ev:
        ev.run_reference()
        for label, path in files.items():
            if label == "f32":
                continue
            if label.startswith("genai"):
                model = GenaiLogits(path, threads)
                try:
                    fig = ev.run_model(model, path, label)  # type: ignore[arg-type]
                except Exception as e:  # onnxruntime refuses the graph's inputs: say why, keep the other rows
                    log(f"{label}: not evaluated: {str(e).splitlines()[-1][:300]}")
                    continue
                finally:
                    model.close()
            else:
                fig = ev.run_variant(path, label)
            rows.append((label, fig.figures))
            log(f"{label}: KLD {fig.figures['kld_mean']:.4f}, same top {fig.figures['same_top_pct']:.2f} %")
    return rows


def run(cmd: list[str]) -> float:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return float(json.loads(out)["tps"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=14, help="evaluation chunks of 512 tokens (the ladder's 14)")
    ap.add_argument("--calib-text", type=Path, default=None)
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2", help="the bundled checkpoint")
    ap.add_argument("--types", default="", help=f"comma list of ONNX types (default {','.join(OURS_TYPES)})")
    ap.add_argument("--prepare", action="store_true", help="build every file, measure nothing")
    ap.add_argument("--no-speed", action="store_true", help="quality only (CPU-heavy: run under tools/heavy)")
    ap.add_argument("--no-quality", action="store_true", help="speed only")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edge-bench-onnx"))
    ap.add_argument("--genai-venv", type=Path, default=Path("/tmp/genai-venv"))
    ap.add_argument(
        "--genai",
        default="int4",
        help="onnxruntime-genai builder precisions measured beside ours (comma list; int4 is the anchor, e.g. int4,int8)",
    )
    args = ap.parse_args()
    types = args.types.split(",") if args.types else list(OURS_TYPES)
    precisions = tuple(dict.fromkeys(["int4", *args.genai.split(",")]))
    files = prepare(args.model, types, args.work, args.genai_venv, args.threads, args.calib_text, precisions)
    if args.prepare:
        return
    med = {} if args.no_speed else speed(files, types, args)
    if not args.no_quality:
        report_quality(files, med, args.chunks, args.threads)


def speed(files: dict[str, Path], types: list[str], args: argparse.Namespace) -> dict[str, float]:
    gpy = genai_python(args.genai_venv)
    cmds = {
        t: [sys.executable, "-c", OURS, str(files[t]), str(args.tokens), str(args.threads), str(ROOT)] for t in types
    }
    for label in [k for k in files if k.startswith("genai")]:
        cmds[label] = [str(gpy), "-c", GENAI, str(files[label]), str(args.tokens)]
    tps: dict[str, list[float]] = {k: [] for k in cmds}
    for i in range(args.rounds):
        for label, cmd in cmds.items():  # interleaved: each round runs every variant once
            tps[label].append(run(cmd))
        log(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in tps.items()) + " t/s")
    med = {k: statistics.median(v) for k, v in tps.items()}
    base = med["genai int4"]
    print(f"{MODELS[args.model][1]}, {args.tokens} tokens, {args.threads} threads, median of {args.rounds} (tokens/s):")
    for k, v in med.items():
        if k == "genai int4":
            print(f"  {k:20s} {v:6.1f} t/s")
            continue
        lo, mid, hi, below = paired(tps[k], tps["genai int4"], goal=0.9)
        print(
            f"  {k:20s} {v:6.1f} t/s  {v / base:.2f}x genai int4 (goal >= 0.9x); per round: median {mid:.3f}, "
            f"bootstrap 90 % {lo:.3f}-{hi:.3f}, P(median < 0.9) {below:.3f}"
        )
    for k in [t for t in types if t.startswith("onnx:int8")] if "genai int8" in tps else []:
        lo, mid, hi, _ = paired(tps[k], tps["genai int8"], goal=0.9)
        print(f"  {k} / genai int8: per round median {mid:.3f}, bootstrap 90 % {lo:.3f}-{hi:.3f}")
    return med


def paired(ours: list[float], anchor: list[float], *, goal: float, n: int = 4000) -> tuple[float, float, float, float]:
    """Ratios of the runs of one round (run back to back, so a slow spell of the machine hits both):
    their median, a bootstrap 90 % interval of that median, and the bootstrap probability that it is
    below `goal`. Fixed seed: the same runs give the same figures."""
    import numpy as np

    r = np.asarray(ours) / np.asarray(anchor)
    boot = np.median(np.random.default_rng(0).choice(r, size=(n, len(r))), axis=1)
    return (
        float(np.quantile(boot, 0.05)),
        float(np.median(r)),
        float(np.quantile(boot, 0.95)),
        float((boot < goal).mean()),
    )


def report_quality(files: dict[str, Path], med: dict[str, float], chunks: int, threads: int) -> None:
    rows = quality(files, chunks, threads)
    base = med.get("genai int4")
    print(f"quality against F32 on the ladder's text ({chunks} chunks x 512):")
    print("| variant | KLD mean | KLD p99 | same top % | PPL | tokens/s | x genai int4 |")
    print("|---|---|---|---|---|---|---|")
    for label, f in rows:
        tps = f"{med[label]:.1f}" if label in med else "-"
        ratio = f"{med[label] / base:.2f}" if label in med and base else "-"
        print(
            f"| {label} | {f['kld_mean']:.4f} | {f['kld_p99']:.4f} | {f['same_top_pct']:.2f} | {f['ppl']:.3f} "
            f"| {tps} | {ratio} |"
        )


if __name__ == "__main__":
    main()
