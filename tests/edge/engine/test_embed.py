"""Embeddings on the llama.cpp backend: agreement with sentence-transformers, batching, pooling,
truncation, dimensions and bad inputs; a generative model embeds too (last-token pooling)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from edge.engine import embed as embed_mod
from edge.engine import open_engine
from edge.engine.base import SamplingParams
from edge.errors import BadRequestError, ContextOverflowError
from tests.support.embed_texts import PASSAGES, QUESTIONS, SENTENCES


def _cos(a, b) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _embed(engine, texts, **kw):
    ids = [engine.tokenize(t, add_special=True, parse_special=False) for t in texts]
    return asyncio.run(engine.embed(ids, **kw))


@pytest.fixture(scope="module")
def f32(minilm_gguf):
    engine = open_engine(minilm_gguf("F32"), name="minilm", n_threads=2)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(minilm_reference):
    return lambda texts: minilm_reference.encode(texts, normalize_embeddings=True, batch_size=64).tolist()


@pytest.mark.parametrize("qtype, floor", [("F32", 0.9999), ("Q8_0", 0.998)])
def test_matches_sentence_transformers(minilm_gguf, reference, qtype, floor):
    engine = open_engine(minilm_gguf(qtype), name=f"minilm-{qtype}", n_threads=2)
    try:
        ours = _embed(engine, SENTENCES).vectors
    finally:
        engine.close()
    sims = [_cos(a, b) for a, b in zip(ours, reference(SENTENCES))]
    worst = min(range(len(sims)), key=sims.__getitem__)
    assert sims[worst] >= floor, f"{qtype}: cosine {sims[worst]:.6f} on {SENTENCES[worst]!r}"


def test_retrieval_top1_equals_reference(f32, reference):
    def top1(q, p):
        return [max(range(len(p)), key=lambda j: _cos(qv, p[j])) for qv in q]

    ours = top1(_embed(f32, QUESTIONS).vectors, _embed(f32, PASSAGES).vectors)
    theirs = top1(reference(QUESTIONS), reference(PASSAGES))
    assert ours == theirs


def test_vectors_are_unit_length_and_batching_changes_nothing(f32, monkeypatch):
    calls = []
    batched = _embed(f32, SENTENCES)  # builds the embedder
    embedder = f32._embedder
    real = embedder._decode
    monkeypatch.setattr(embedder, "_decode", lambda entries, **kw: (calls.append(len(entries)), real(entries, **kw)))
    again = _embed(f32, SENTENCES)
    assert len(calls) < len(SENTENCES) and sum(calls) == len(SENTENCES), calls  # several inputs per decode
    single = [_embed(f32, [s]).vectors[0] for s in SENTENCES[:5]]
    for v in batched.vectors:
        assert abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-5
    for a, b in zip(single, batched.vectors):
        assert _cos(a, b) > 0.99999
    assert again.vectors == batched.vectors
    assert embedder.pooling == "mean" and embedder.encoder


def test_dimensions_truncate_then_renormalise(f32):
    full = _embed(f32, SENTENCES[:2]).vectors
    short = _embed(f32, SENTENCES[:2], dimensions=64).vectors
    for f, s in zip(full, short):
        assert len(s) == 64
        assert s == pytest.approx(embed_mod.normalize(f, 64), abs=1e-6)
    for bad in (0, 385):
        with pytest.raises(BadRequestError, match="dimensions must be between 1 and 384"):
            _embed(f32, ["x"], dimensions=bad)


def test_long_input_truncates_or_refuses(f32):
    text = "word " * 700
    got = _embed(f32, [text, "short"])
    assert got.n_tokens_in[0] > 512 and got.n_tokens[0] == 512 and got.n_tokens[1] == got.n_tokens_in[1]
    with pytest.raises(ContextOverflowError, match=r"input 0 has \d+ tokens but this model embeds at most 512"):
        _embed(f32, [text], truncate=False)


def test_bad_token_ids_and_empty_inputs(f32):
    with pytest.raises(BadRequestError, match="outside this model's vocabulary"):
        asyncio.run(f32.embed([[101, 30522, 102]]))
    with pytest.raises(BadRequestError, match="outside this model's vocabulary"):
        asyncio.run(f32.embed([[-1]]))
    with pytest.raises(BadRequestError, match="input 1 is empty"):
        asyncio.run(f32.embed([[101, 102], []]))
    assert len(asyncio.run(f32.embed([[101, 7592, 102]])).vectors[0]) == 384  # still serving


def test_encoder_refuses_generation(f32):
    assert f32.info.is_encoder
    with pytest.raises(BadRequestError, match="is an embedding model"):
        f32.generate([101, 102], SamplingParams(max_tokens=1))


@pytest.fixture(scope="module")
def smollm2_f32(smollm2_path, module_tmp):
    """The bundled SmolLM2 at F32 (unpacked, converted back): float matmuls, whose rounding does not
    hide an error in how a long input is cut into chunks."""
    from quantize.convert import convert
    from quantize.unpack import unpack

    work = module_tmp("smollm2-f32")
    unpack(smollm2_path, work / "hf", quiet=True)
    [result] = convert(work / "hf", ["f32"], work, name="s", quiet=True)
    return Path(result.path)


def test_generative_model_embeds_with_last_token_pooling(smollm2_path, smollm2_f32, monkeypatch):
    engine = open_engine(smollm2_path, name="smollm2", n_ctx=1024, n_threads=2)
    try:
        assert not engine.info.is_encoder
        texts = [SENTENCES[0], SENTENCES[2], "word " * 300]
        vectors = _embed(engine, texts).vectors
        assert engine._embedder.pooling == "last" and engine._embedder.n_batch >= 300
        assert _cos(vectors[0], vectors[1]) < 0.95  # different texts, different vectors
    finally:
        engine.close()
    # a budget that forces n_batch down to 32: the long input is decoded in chunks, the same vector up to
    # rounding. On F32, since with Q4_1 weights 32-token and 300-token matmuls round activations
    # differently (cosine 0.989 on an AMD EPYC), which would hide a chunking error of that size.
    engine = open_engine(smollm2_f32, name="smollm2-f32", n_ctx=1024, n_threads=2)
    try:
        batched = _embed(engine, texts).vectors
        assert engine._embedder.n_batch >= 300
    finally:
        engine.close()
    monkeypatch.setattr(embed_mod, "LOGITS_BUDGET", 1)
    engine = open_engine(smollm2_f32, name="smollm2-f32", n_ctx=1024, n_threads=2)
    try:
        chunked = _embed(engine, texts).vectors
        assert engine._embedder.n_batch == embed_mod.MIN_CAUSAL_BATCH
    finally:
        engine.close()
    cosines = [_cos(a, b) for a, b in zip(chunked, batched)]
    print("chunked / batched cosines", cosines)
    assert min(cosines[:2]) > 0.99999  # short inputs: one chunk either way
    # The long one still differs by llama.cpp's flash attention, whose CPU kernel rounds differently in
    # 32-token batches: in llama.cpp alone, this F32 model's last logits for the same 300 tokens have
    # cosine 0.99934 between n_ubatch 32 and 512 with flash attention, and are identical without it.
    # Measured here 0.996; a chunk lost or misplaced gives far less.
    assert cosines[2] > 0.99


@pytest.fixture(scope="module", params=["smollm2", "gemma3", "minilm-F32", "minilm-Q8_0"])
def any_model(request, smollm2_path, gemma3_path, minilm_gguf):
    path = {"smollm2": smollm2_path, "gemma3": gemma3_path}.get(request.param)
    engine = open_engine(
        path or minilm_gguf(request.param.split("-")[1]),
        name=request.param,
        n_ctx=1024,
        n_threads=2,
        embed_exact=True,
    )
    yield engine
    engine.close()


def test_an_input_alone_or_in_any_batch_gives_the_same_vector(any_model):
    """Same tokens, same pooling, same vector: alone, in a batch, in another order or company. Quantized
    models make this strict: their activations are re-quantized before every matmul, so a rounding
    difference in one attention sum shows up as cosine 0.998 at the output."""
    texts = SENTENCES[:12]
    alone = [_embed(any_model, [t]).vectors[0] for t in texts]
    batched = _embed(any_model, texts).vectors
    shuffled = _embed(any_model, [*PASSAGES[:5], *texts[::-1]]).vectors[5:][::-1]
    assert any_model._embedder.exact and len(_groups(any_model, texts)) < len(texts)  # several inputs per call
    for t, a, b, c in zip(texts, alone, batched, shuffled):
        assert 1 - _cos(a, b) < 1e-6 and 1 - _cos(a, c) < 1e-6, (t, 1 - _cos(a, b), 1 - _cos(a, c))


def _groups(engine, texts):
    ids = [engine.tokenize(t, add_special=True, parse_special=False) for t in texts]
    emb = engine._embedder
    return embed_mod.plan_batches([embed_mod.align_up(len(t), emb.align) for t in ids], emb.n_batch, emb.n_seqs)


# -- pure helpers ------------------------------------------------------------------------------------
def test_plan_batches_packs_within_tokens_and_sequences():
    assert embed_mod.plan_batches([3, 3, 3, 3], 8, 64) == [[0, 1], [2, 3]]
    assert embed_mod.plan_batches([3, 3, 3], 100, 2) == [[0, 1], [2]]
    assert embed_mod.plan_batches([10, 2, 2], 8, 64) == [[0], [1, 2]]  # a long input alone


def test_fit_inputs_keeps_the_closing_separator():
    assert embed_mod.fit_inputs([[1, 2, 3, 4, 9]], 3, truncate=True, keep_last=True) == [[1, 2, 9]]
    assert embed_mod.fit_inputs([[1, 2, 3, 4, 9]], 3, truncate=True, keep_last=False) == [[1, 2, 3]]
    with pytest.raises(ContextOverflowError, match="input 0 has 5 tokens"):
        embed_mod.fit_inputs([[1, 2, 3, 4, 9]], 3, truncate=False, keep_last=True)


def test_pooling_from_metadata():
    assert embed_mod.pooling_for({"bert.pooling_type": "2"}, "bert", True) == "cls"
    assert embed_mod.pooling_for({}, "bert", True) == "mean"
    assert embed_mod.pooling_for({}, "llama", False) == "last"
    assert embed_mod.pooling_for({"llama.pooling_type": "0"}, "llama", False) == "last"  # none: our default
