"""8B at scale on a small box: HF bf16 checkpoint with Llama-3.1-8B's shape -> Q4_K_M.

    python bench/scale.py [--work DIR] [--keep]      # needs ~35 GB free on DIR's disk; takes long

1. A random-weight checkpoint with the real Llama-3.1-8B config (bf16, sharded safetensors + index).
   The vocabulary is SmolLM2's (unpacked from the bundled GGUF by `edge-quantize unpack`): a real
   BPE tokenizer that llama.cpp's converter recognises, with vocab_size = 49152 (7.4B parameters,
   14.7 GB). The weights are one random bf16 pool written cyclically
   (their values do not change the work done).
2. Anchor: convert_hf_to_gguf.py --outtype f16, then llama-quantize F16 -> Q4_K_M (both from the
   llama-cpp-python sdist), wall time and peak RSS of each process.
3. Ours: `edge-quantize convert CKPT --to q4_k_m` (one process), wall time, peak RSS, the largest
   disk use of its output folder (sampled every 0.2 s), and whether the intermediate was removed.

Goals: peak RSS <= the anchor's, wall <= 1.0x the anchor pair, intermediate removed, disk never
above intermediate + outputs. Printed as ratios (bench/common.py). The checkpoint is kept in DIR for
the next run (delete it with --clean).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from common import Row

LLAMA31_8B = {  # meta-llama/Llama-3.1-8B config.json, vocab_size set to the tokenizer's below
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
}
SHARD_BYTES = 5 * 10**9  # as transformers' default max_shard_size="5GB"
POOL_BYTES = 1 << 28  # 256 MiB of random bf16, written cyclically


def tensor_shapes(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, ff, v, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(L):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "mlp.gate_proj.weight", (ff, h)),
            (p + "mlp.up_proj.weight", (ff, h)),
            (p + "mlp.down_proj.weight", (h, ff)),
        ]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def _pool() -> bytes:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(POOL_BYTES // 2, dtype=np.float32) * 0.02).view(np.uint32)  # (n,) f32 bits
    return (x >> 16).astype(np.uint16).tobytes()  # bf16 = top half


def write_shards(folder: Path, shapes: list[tuple[str, tuple[int, ...]]]) -> int:
    """safetensors shards of at most SHARD_BYTES + model.safetensors.index.json; returns total bytes."""
    groups, cur, size = [], [], 0
    for name, shape in shapes:
        n = int(np.prod(shape)) * 2
        if cur and size + n > SHARD_BYTES:
            groups.append(cur)
            cur, size = [], 0
        cur.append((name, shape, n))
        size += n
    groups.append(cur)
    pool, weight_map, total = _pool(), {}, 0
    for k, group in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        header, off = {}, 0
        for name, shape, n in group:
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)  # u64 header length, JSON header, then data
            pos = 0
            for _, _, n in group:
                left = n
                while left:
                    take = min(left, len(pool) - pos)
                    f.write(pool[pos : pos + take])
                    pos, left = (pos + take) % len(pool), left - take
        total += off
        common.console.log(f"wrote {fname} ({off / 1e9:.1f} GB)")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    return total


def make_checkpoint(work: Path) -> Path:
    ckpt = work / "llama31-8b-shape"
    if (ckpt / "model.safetensors.index.json").is_file():
        return ckpt
    tok = work / "smollm2-tokenizer"
    if not (tok / "tokenizer.json").is_file():
        cmd = [common.venv_script("edge-quantize"), "unpack", common.bundled_model("smollm2"), "-o", tok, "--force"]
        common.check(common.run_measured(cmd), "edge-quantize unpack")
    ckpt.mkdir(parents=True, exist_ok=True)
    for f in tok.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "generation_config.json"):
            shutil.copy(f, ckpt / f.name)
    vocab = len(json.loads((tok / "tokenizer.json").read_text())["model"]["vocab"])
    src_cfg = json.loads((tok / "config.json").read_text())
    cfg = dict(
        LLAMA31_8B,
        vocab_size=vocab,
        bos_token_id=src_cfg.get("bos_token_id", 1),
        eos_token_id=src_cfg.get("eos_token_id", 2),
    )
    (ckpt / "config.json").write_text(json.dumps(cfg, indent=1))
    total = write_shards(ckpt, tensor_shapes(cfg))
    common.console.log(f"checkpoint {ckpt}: {total / 1e9:.1f} GB, vocab {vocab}")
    return ckpt


class DiskPeak:
    """Largest total size of the files in a folder, sampled every 0.2 s while a job runs."""

    def __init__(self, folder: Path):
        self.folder, self.peak, self._stop = folder, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in self.folder.glob("*"):
                try:
                    total += p.stat().st_size
                except FileNotFoundError:
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_anchor(ckpt: Path, work: Path) -> tuple[common.RunResult, common.RunResult, int]:
    out = work / "anchor"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    llama = common.llama_cpp_source()
    env = dict(os.environ, PYTHONPATH=str(llama / "gguf-py"), HF_HUB_OFFLINE="1")
    f16 = out / "anchor-f16.gguf"
    conv = common.check(
        common.run_measured(
            [sys.executable, llama / "convert_hf_to_gguf.py", ckpt, "--outtype", "f16", "--outfile", f16], env=env
        ),
        "convert_hf_to_gguf.py",
    )
    q = common.check(
        common.run_measured([common.anchor_binary("llama-quantize"), f16, out / "anchor-q4_k_m.gguf", "Q4_K_M"]),
        "llama-quantize",
    )
    size = (out / "anchor-q4_k_m.gguf").stat().st_size
    f16.unlink()
    return conv, q, size


def run_ours(ckpt: Path, work: Path) -> tuple[common.RunResult, int, list[str], int]:
    out = work / "ours"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cmd = [
        common.venv_script("edge-quantize"),
        "convert",
        ckpt,
        "--to",
        "q4_k_m",
        "-o",
        out,
        "--name",
        "ours",
        "--quiet",
    ]
    with DiskPeak(out) as disk:
        res = common.check(common.run_measured(cmd), "edge-quantize convert --to q4_k_m")
    files = sorted(p.name for p in out.iterdir())
    return res, disk.peak, files, (out / "ours-q4_k_m.gguf").stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("EDGE_SCALE_DIR", "/var/tmp/edge-scale")),
        help="a folder on a disk with ~35 GB free (not tmpfs)",
    )
    ap.add_argument("--clean", action="store_true", help="delete the checkpoint and outputs afterwards")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.work).free
    if free < 35e9 and not (args.work / "llama31-8b-shape" / "model.safetensors.index.json").is_file():
        raise SystemExit(f"{args.work} has {free / 1e9:.0f} GB free; this benchmark needs ~35 GB")
    ckpt = make_checkpoint(args.work)
    common.console.log("anchor: convert_hf_to_gguf.py -> F16, llama-quantize -> Q4_K_M")
    conv, quant, anchor_size = run_anchor(ckpt, args.work)
    common.console.log("ours: edge-quantize convert --to q4_k_m")
    ours, disk_peak, files, our_size = run_ours(ckpt, args.work)
    inter = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))  # a 16-bit intermediate is this big
    pair = conv.seconds + quant.seconds
    rows = [
        Row(
            "wall time HF -> Q4_K_M",
            "s",
            ours.seconds,
            {"anchor pair": pair},
            "<= 1.0x",
            f"anchor: convert {conv.seconds:.0f} s + quantize {quant.seconds:.0f} s",
        ),
        Row(
            "peak RSS",
            "MB",
            ours.peak_rss_mb,
            {"anchor pair": max(conv.peak_rss_mb, quant.peak_rss_mb)},
            "<= 1.0x",
            f"anchor: convert {conv.peak_rss_mb:.0f} MB, quantize {quant.peak_rss_mb:.0f} MB",
        ),
        Row("Q4_K_M size", "MB", our_size / 1e6, {"anchor pair": anchor_size / 1e6}, "same mix"),
        Row(
            "peak disk of the output folder",
            "GB",
            disk_peak / 1e9,
            {"anchor pair": (inter + anchor_size) / 1e9},
            "<= intermediate + outputs",
            f"files left: {', '.join(files)}",
        ),
    ]
    common.print_table("8B-shaped (Llama-3.1, vocab 49152) bf16 -> Q4_K_M", rows, ["anchor pair"])
    if args.json:
        print(common.rows_json(rows, ["anchor pair"], {"intermediate_removed": files == ["ours-q4_k_m.gguf"]}))
    if args.clean:
        shutil.rmtree(args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
