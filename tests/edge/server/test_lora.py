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
    from edge.store import ModelStore
    from quantize.adapter_install import install_adapter
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
    install_adapter(peft_dir, home / "models" / "smollm2-f32.gguf", "desk", store=ModelStore(home))  # + desk.json
    (home / "aliases.toml").write_text('"support" = "smollm2:q8_0+desk@0.8"\n')  # base, adapter, scale fixed
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


def test_adapter_is_listed_and_shown_with_base_and_scale(server, lora_setup):
    import ollama
    import openai

    ids = [m.id for m in openai.OpenAI(base_url=server.url + "/v1", api_key="none").models.list()]
    o = ollama.Client(host=server.url, timeout=300)
    tags = [m.model for m in o.list().models]
    for names in (ids, tags):
        assert {"smollm2:f32+desk", "smollm2:q8_0+desk", "support:latest"} <= set(names)  # and the alias
    show = o.show("smollm2:f32+desk@0.5")
    assert show.details.parent_model == "smollm2:f32" and "ADAPTER" in show.modelfile
    info = show.modelinfo
    assert (info["adapter.name"], info["adapter.base"], info["adapter.scale"]) == ("desk", "smollm2:f32", 0.5)
    assert (info["adapter.lora.rank"], info["adapter.lora.alpha"]) == (8, 16.0)  # tests.support.lora's config
    assert info["adapter.installed_for"] == str((lora_setup["home"] / "models" / "smollm2-f32.gguf").resolve())
    alias = o.show("support")  # the alias fixes base, adapter and scale
    assert (alias.details.parent_model, alias.modelinfo["adapter.scale"]) == ("smollm2:q8_0", 0.8)
    with server.client() as c:
        raw = c.post("/api/show", json={"model": "smollm2:f32+desk"}).json()
        plain = c.post("/api/show", json={"model": "smollm2:f32"}).json()
        missing = c.post("/v1/completions", json={"model": "smollm2:f32+nope", "prompt": "x", "max_tokens": 1})
    assert raw["adapters"] == [{"id": 0, "path": info["adapter.file"], "scale": 1.0}]  # llama-server's /lora-adapters
    assert plain["adapters"] == [] and "adapter.name" not in plain["model_info"]
    assert missing.status_code == 404 and "desk" in missing.json()["error"]["message"]


def test_per_request_scale_through_the_openai_and_ollama_clients(server):
    import ollama
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")

    def complete(model: str, **extra) -> str:
        r = client.completions.create(
            model=model, prompt=PROMPT, max_tokens=STEPS, temperature=0, extra_body=extra or None
        )
        return r.choices[0].text

    base, tuned = complete("smollm2:f32"), complete("smollm2:f32+desk")
    assert base != tuned
    assert complete("smollm2:f32+desk@0.5", lora_scale=0.0) == base  # the body's scale replaces the name's
    assert complete("smollm2:f32+desk@0", lora_scale=1.0) == tuned
    assert complete("smollm2:f32+desk", lora_scale=0.25) == complete("smollm2:f32+desk@0.25")
    assert complete("smollm2:f32+desk", lora=[{"id": 0, "scale": 0.0}]) == base  # llama-server's spelling
    chat = client.chat.completions.create(
        model="smollm2:f32+desk",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=8,
        temperature=0,
        extra_body={"lora_scale": 0.5},
    )
    assert chat.choices[0].message.content
    o = ollama.Client(host=server.url, timeout=300)
    options = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": STEPS, "lora_scale": 0.0}
    assert o.generate(model="smollm2:f32+desk", prompt=PROMPT, raw=True, options=options).response == base

    bad = [
        ({"lora_scale": 100}, "smollm2:f32+desk"),  # out of [-16, 16]
        ({"lora_scale": "x"}, "smollm2:f32+desk"),
        ({"lora_scale": 0.5}, "smollm2:f32"),  # no adapter in the name
        ({"lora": [{"id": 1, "scale": 0.5}]}, "smollm2:f32+desk"),  # not the name's adapter
        ({"lora": [{"id": 0, "scale": 0.5}], "lora_scale": 0.5}, "smollm2:f32+desk"),
    ]
    for extra, model in bad:
        with pytest.raises(openai.BadRequestError):
            complete(model, **extra)
    with server.client() as c:  # a NaN cannot travel through the openai client's strict JSON
        r = c.post(
            "/v1/completions",
            content=b'{"model": "smollm2:f32+desk", "prompt": "x", "max_tokens": 1, "lora_scale": NaN}',
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 400, r.text
    with pytest.raises(ollama.ResponseError):
        o.generate(model="smollm2:f32", prompt=PROMPT, options=options)


def test_truncated_or_corrupted_adapter_is_refused_and_the_server_keeps_serving(server, lora_setup):
    good = (lora_setup["home"] / "adapters" / "desk.gguf").read_bytes()
    folder = lora_setup["home"] / "adapters"
    (folder / "cut.gguf").write_bytes(good[: len(good) // 2])
    (folder / "junk.gguf").write_bytes(good[:64] + bytes(b ^ 0xFF for b in good[64:4096]) + good[4096:])
    try:
        with server.client() as c:
            for name in ("cut", "junk"):
                r = c.post("/v1/completions", json={"model": f"smollm2:f32+{name}", "prompt": "x", "max_tokens": 1})
                assert 400 <= r.status_code < 500, r.text
                assert f"{name}.gguf" in r.json()["error"]["message"], r.text
    finally:
        for name in ("cut", "junk"):
            (folder / f"{name}.gguf").unlink()
    assert server.proc.poll() is None
    assert "Harbor Books" in _complete(server, "smollm2:f32+desk")
