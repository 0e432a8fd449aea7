"""PEFT LoRA adapters made in the tests (random or trained), and llama.cpp's converter as the oracle.

Everything runs offline on CPU with a fixed seed; torch, transformers and peft are test-only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SDIST_VERSION = "0.3.36"
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PHI3_LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def llama_cpp_source() -> Path:
    """vendor/llama.cpp of the unpacked llama-cpp-python sdist: $EDGE_ANCHORS_SRC, else beside the build."""
    env = os.environ.get("EDGE_ANCHORS_SRC")
    build = Path(os.environ.get("EDGE_ANCHORS", "/work/anchors/build"))
    for root in ([Path(env)] if env else []) + [build.parent / f"llama_cpp_python-{SDIST_VERSION}"]:
        for cand in (root, root / "vendor" / "llama.cpp"):
            if (cand / "convert_lora_to_gguf.py").is_file():
                return cand
    raise FileNotFoundError("llama.cpp's convert_lora_to_gguf.py not found: set EDGE_ANCHORS_SRC to the sdist")


def random_adapter(
    base_dir: Path, out_dir: Path, targets, *, r: int = 4, alpha: float = 8, seed: int = 0, **kw
) -> Path:
    """A PEFT adapter on the checkpoint in `base_dir` with random A and B (so B A is not zero)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False, **kw)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # large enough to matter next to initializer_range 0.2 weights
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def train_adapter(base_dir: Path, out_dir: Path, text: str, *, steps: int = 40, seed: int = 0, layers: int = 8) -> Path:
    """A real LoRA (r 8 on the attention and MLP projections of the last `layers` blocks) trained to
    continue `text`. Only the last blocks: backpropagation then stops there, which keeps it fast on CPU."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # 2 threads on a busy 2-core machine wait on each other
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    n_layers = model.config.num_hidden_layers
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=list(LLAMA_LINEARS),
        layers_to_transform=list(range(n_layers - layers, n_layers)),
    )
    model = get_peft_model(model, config)
    ids = tok(text, return_tensors="pt").input_ids
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def merged_model(base_dir: Path, peft_dir: Path):
    """PEFT's merge_and_unload of the adapter: the transformers reference."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(model, peft_dir).merge_and_unload().eval()


def oracle_convert(peft_dir: Path, base_dir: Path, out: Path) -> Path:
    """llama.cpp's convert_lora_to_gguf.py on the same folder (F32)."""
    llama = llama_cpp_source()
    env = dict(os.environ, PYTHONPATH=str(llama / "gguf-py"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(llama / "convert_lora_to_gguf.py"), str(peft_dir), "--base", str(base_dir)]
    subprocess.run([*cmd, "--outtype", "f32", "--outfile", str(out)], check=True, env=env, capture_output=True)
    return out


def gguf_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(tensor name -> array in numpy order, key -> value) of a small GGUF file."""
    import gguf

    reader = gguf.GGUFReader(path)
    tensors = {t.name: np.array(t.data).reshape(tuple(reversed([int(d) for d in t.shape]))) for t in reader.tensors}
    kv = {}
    for f in reader.fields.values():
        if f.types and f.types[0] != gguf.GGUFValueType.ARRAY:
            kv[f.name] = f.contents()
    return tensors, kv


def synthetic_adapter(base_gguf: Path, out: Path, stems=("blk.0.attn_q.weight", "blk.0.ffn_up.weight"), r: int = 4):
    """A GGUF LoRA adapter written directly (gguf's writer, random values, no PEFT): pairs for `stems`
    of the GGUF model `base_gguf`, shaped as llama.cpp expects. For corpora of malformed adapters."""
    import gguf

    from edge.formats.gguf import open_gguf

    with open_gguf(base_gguf) as f:
        arch, shapes = f.meta.architecture, {t.name: t.shape for t in f.tensors}
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(out, arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 8.0)
    for stem in stems:
        n_in, n_out = shapes[stem][:2]  # ggml order
        w.add_tensor(stem + ".lora_a", rng.standard_normal((r, n_in), dtype=np.float32))  # ne [in, r]
        w.add_tensor(stem + ".lora_b", rng.standard_normal((n_out, r), dtype=np.float32))  # ne [r, out]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(out)
