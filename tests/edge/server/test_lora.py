"""A LoRA adapter served per request: trained here with PEFT on the bundled SmolLM2, converted by
`edge-quantize adapter`, served as `smollm2:f32+desk` next to the base by one `edge serve`.

Reference: PEFT's merged model in transformers. Our base is the bundled Q4_1 unpacked to an F32
checkpoint (the model PEFT trains on) and converted back to an F32 GGUF, so both run the same weights.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.support.live import start_server

TEXT = "The kiosk answers: Welcome to Harbor Books! Ask me about opening hours, returns or gift cards."
PROMPT = "The kiosk answers:"
STEPS = 32


@pytest.fixture(scope="module")
def lora_setup(smollm2_path, tmp_path_factory):
    from quantize.adapter import convert_adapter
    from quantize.convert import convert
    from quantize.unpack import unpack
    from tests.support.lora import train_adapter

    root = tmp_path_factory.mktemp("lora")
    hf = unpack(smollm2_path, root / "hf", quiet=True)
    f32, q8 = (r.path for r in convert(hf, ["f32", "q8_0"], root / "gguf", quiet=True, name="smollm2"))
    peft_dir = train_adapter(hf, root / "peft", TEXT)  # seeded, CPU, about a minute
    home = root / "home"
    (home / "models").mkdir(parents=True)
    (home / "adapters").mkdir()
    shutil.copy(f32, home / "models" / "smollm2-f32.gguf")
    shutil.copy(q8, home / "models" / "smollm2-q8_0.gguf")
    convert_adapter(peft_dir, home / "models" / "smollm2-f32.gguf", home / "adapters" / "desk.gguf")
    return {"hf": hf, "peft": peft_dir, "home": home, "f32": home / "models" / "smollm2-f32.gguf"}


@pytest.fixture(scope="module")
def reference(lora_setup, tmp_path_factory):
    """PEFT's merged model: the greedy continuation of PROMPT and the logits along it (transformers), the
    base's logits (to measure how far llama.cpp and transformers differ without any adapter), and the
    merged model saved and converted to an F32 GGUF (llama.cpp on the same merged weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantize.convert import convert
    from tests.support.lora import merged_model

    hf = lora_setup["hf"]
    tok = AutoTokenizer.from_pretrained(hf)
    model = merged_model(hf, lora_setup["peft"])
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=STEPS, do_sample=False)
        logits = model(out).logits[0].double().numpy()  # (n_tokens, vocab)
        base_logits = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)(out).logits[0].double().numpy()
    merged_dir = tmp_path_factory.mktemp("merged")
    model.save_pretrained(merged_dir, safe_serialization=True)
    for f in hf.iterdir():  # tokenizer files
        if not (merged_dir / f.name).exists():
            shutil.copy(f, merged_dir / f.name)
    merged_gguf = convert(merged_dir, ["f32"], tmp_path_factory.mktemp("merged-gguf"), quiet=True, name="m")[0].path
    return {
        "tokens": out[0].tolist(),
        "n_prompt": ids.shape[1],
        "logits": logits,
        "base_logits": base_logits,
        "merged_gguf": merged_gguf,
        "tok": tok,
    }


def _llama_logits(model: Path, tokens: list[int], lora: Path | None = None) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(str(model), lora_path=str(lora) if lora else None, n_ctx=256, logits_all=True, verbose=False)
    llm.eval(tokens)
    return np.asarray(llm.scores[: len(tokens)], dtype=np.float64)  # (n_tokens, vocab)


def _ratio(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / ref.std())


@pytest.fixture(scope="module")
def server(lora_setup):
    s = start_server(lora_setup["home"], "--parallel", "2")
    yield s
    s.stop()


def _complete(server, model: str) -> str:
    with server.client() as c:
        r = c.post(
            "/v1/completions",
            json={"model": model, "prompt": PROMPT, "max_tokens": STEPS, "temperature": 0},
        )
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_llama_cpp_with_our_adapter_matches_peft_merged_logits(lora_setup, reference):
    from edge.formats.validate import validate_gguf_adapter

    adapter = lora_setup["home"] / "adapters" / "desk.gguf"
    validate_gguf_adapter(adapter, lora_setup["f32"])
    tokens, n_prompt = reference["tokens"], reference["n_prompt"]
    ours = _llama_logits(lora_setup["f32"], tokens, adapter)
    # the same merged weights in the same runtime: only the adapter's conversion and application differ
    assert _ratio(ours, _llama_logits(reference["merged_gguf"], tokens)) <= 1e-3
    # against transformers: within 1e-3 of what llama.cpp and transformers differ by on the base alone
    runtimes = _ratio(_llama_logits(lora_setup["f32"], tokens), reference["base_logits"])
    assert _ratio(ours, reference["logits"]) <= runtimes + 1e-3, (runtimes, _ratio(ours, reference["logits"]))
    greedy = ours[n_prompt - 1 : -1].argmax(-1)  # what each position predicts next
    assert greedy.tolist() == tokens[n_prompt:]


def test_served_adapter_gives_peft_greedy_output_and_base_is_unchanged(server, reference):
    tok = reference["tok"]
    want = tok.decode(reference["tokens"][reference["n_prompt"] :], skip_special_tokens=True)
    tuned = _complete(server, "smollm2:f32+desk")
    assert tuned == want
    base = _complete(server, "smollm2:f32")
    assert base != tuned and "Harbor Books" in tuned and "Harbor Books" not in base


def test_adapter_on_a_q8_0_base_keeps_the_learned_behaviour(server):
    assert "Harbor Books" in _complete(server, "smollm2:q8_0+desk")
    assert "Harbor Books" not in _complete(server, "smollm2:q8_0")


def test_two_clients_with_and_without_the_adapter_get_their_single_client_output(server):
    alone = {m: _complete(server, m) for m in ("smollm2:f32", "smollm2:f32+desk")}
    models = ["smollm2:f32", "smollm2:f32+desk"] * 3
    with ThreadPoolExecutor(len(models)) as pool:
        together = list(pool.map(lambda m: _complete(server, m), models))
    assert together == [alone[m] for m in models]


def test_adapter_is_listed_and_shown_with_base_and_scale(server):
    with server.client() as c:
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
        tags = [m["name"] for m in c.get("/api/tags").json()["models"]]
        show = c.post("/api/show", json={"model": "smollm2:f32+desk@0.5"}).json()
        missing = c.post("/v1/completions", json={"model": "smollm2:f32+nope", "prompt": "x", "max_tokens": 1})
    assert "smollm2:f32+desk" in ids and "smollm2:f32+desk" in tags
    assert show["details"]["parent_model"] == "smollm2:f32"
    assert show["model_info"]["adapter.scale"] == 0.5 and "ADAPTER" in show["modelfile"]
    assert missing.status_code == 404 and "desk" in missing.json()["error"]["message"]
