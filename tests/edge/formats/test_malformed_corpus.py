"""A malformed-file corpus made from the bundled real models: every file is refused with
ModelFormatError, in a child process under RLIMIT_AS / RLIMIT_CPU (no crash, hang or memory blow-up).

Cases: truncation at many offsets (header, key/values, tensor table, data); every structural field
(version, counts, key/string lengths, value and item types, array counts, tensor name lengths,
n_dims, dims, ggml types, offsets) set to 0, -1, 2**63 (2**31 for u32) and just past the end.
Crafted semantic cases (wrong types, duplicates, overlaps, vocabularies that abort llama.cpp) are
in test_validate.py. Files are sparse copies: only the header is written (tests/support/fuzz/gguf_fields.py).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fuzz.bounded import run_bounded
from tests.support.fuzz.gguf_fields import parse

pytestmark = pytest.mark.slow

# mutations that leave a file valid on purpose (same bytes, or a harmless value), by field name and value
STILL_VALID = {
    ("tensor 0: offset", 0),  # the first tensor is at 0 already
}


def _sparse_copy(src: Path, dst: Path, head: bytes, size: int) -> Path:
    with open(dst, "wb") as f:
        f.write(head)
        f.truncate(size)
    return dst


def _mutations(src: Path, out: Path, tag: str) -> Iterator[dict[Path, str]]:
    layout, fields, table_end = parse(src)
    size = os.path.getsize(src)
    head = open(src, "rb").read(table_end)
    cases: dict[Path, str] = {}
    n = 0
    for name, pos, fmt in fields:
        width = struct.calcsize(fmt)
        past_end = size - (pos + width) + 1
        top = (1 << 63) if width == 8 else (1 << 31)
        for value in (0, (1 << (8 * width)) - 1, top, past_end):
            value &= (1 << (8 * width)) - 1
            new = head[:pos] + value.to_bytes(width, "little") + head[pos + width :]
            if new == head or (name, value) in STILL_VALID:
                continue
            n += 1
            cases[_sparse_copy(src, out / f"{tag}-field-{n}", new, size)] = f"{name} = {value}"
            if len(cases) == BATCH:
                yield cases
                cases = {}
    if cases:
        yield cases


def _truncations(src: Path, out: Path, tag: str) -> Iterator[dict[Path, str]]:
    layout, fields, table_end = parse(src)
    size = os.path.getsize(src)
    head = open(src, "rb").read(table_end)
    kv_end = min(pos for name, pos, _ in fields if name.startswith("tensor 0"))
    cuts = {0, 3, 4, 7, 8, 15, 16, 23, 24, 25, 40, 100}  # magic, version, counts, first key
    cuts |= {kv_end * k // 10 for k in range(1, 10)}  # inside the key/values (the vocabulary)
    cuts |= {kv_end + (table_end - kv_end) * k // 7 for k in range(7)} | {table_end - 1}  # tensor table
    cuts |= {table_end + 32, size // 2, size - 1}  # data
    cases = {}
    for cut in sorted(cuts):
        dst = out / f"{tag}-cut-{cut}"
        _sparse_copy(src, dst, head[:cut], cut)
        cases[dst] = f"truncated at {cut} of {size} bytes"
        if len(cases) == BATCH:
            yield cases
            cases = {}
    if cases:
        yield cases


BATCH = 60  # files on disk at once: each holds the whole header (Gemma's is ~6 MB of vocabulary)


@pytest.fixture(scope="module")
def checked(smollm2_path, gemma3_path, module_tmp) -> tuple[dict[str, str], dict[str, dict]]:
    """(case path -> what was broken, case path -> result). Cases are written, validated in a bounded
    child and deleted a batch at a time: all ~700 at once took 3.6 GB of disk."""
    out, work = module_tmp("corpus"), module_tmp("run")
    corpus: dict[str, str] = {}
    results: dict[str, dict] = {}
    for tag, src in (("smollm2", smollm2_path), ("gemma3", gemma3_path)):
        for make in (_truncations, _mutations):
            for batch in make(src, out, tag):
                results |= run_bounded(list(batch), work)
                corpus |= {str(p): what for p, what in batch.items()}
                for p in batch:
                    p.unlink()
    return corpus, results


@pytest.fixture(scope="module")
def adapter_checked(smollm2_path, module_tmp) -> tuple[dict[str, str], dict[str, dict]]:
    """The same cases made from a LoRA adapter for SmolLM2, checked against SmolLM2 as the server does."""
    from tests.support.lora import synthetic_adapter

    out, work = module_tmp("adapter-corpus"), module_tmp("adapter-run")
    src = synthetic_adapter(smollm2_path, out / "adapter.gguf")
    assert run_bounded([src], work, base=smollm2_path)[str(src)]["result"] == "ok"  # the seed itself is valid
    corpus: dict[str, str] = {}
    results: dict[str, dict] = {}
    for make in (_truncations, _mutations):
        for batch in make(src, out, "adapter"):
            results |= run_bounded(list(batch), work, base=smollm2_path)
            corpus |= {str(p): what for p, what in batch.items()}
    return corpus, results


@pytest.fixture(scope="module")
def corpus(checked) -> dict[str, str]:
    return checked[0]


@pytest.fixture(scope="module")
def results(checked) -> dict[str, dict]:
    return checked[1]


def test_corpus_is_big_enough(corpus):
    assert len(corpus) > 500


def test_every_malformed_file_is_refused_with_model_format_error(corpus, results):
    bad = [f"{what}: {results.get(str(p), {'result': 'no result'})['result']} {results.get(str(p), {}).get('message', '')[:200]}"
           for p, what in corpus.items() if results.get(str(p), {}).get("result") != "ModelFormatError"]  # fmt: skip
    assert not bad, f"{len(bad)} of {len(corpus)} cases not refused cleanly:\n" + "\n".join(bad[:40])


def test_refusals_name_the_problem(corpus, results):
    """Spot checks: truncation says truncated, absurd counts state the limit."""
    by_what = {what: results[str(p)]["message"] for p, what in corpus.items() if str(p) in results}
    truncated = [m for w, m in by_what.items() if w.startswith("truncated at") and "at 0 " not in w]
    assert truncated and all("truncated" in m or "past the end" in m or "bad magic" in m for m in truncated), truncated[
        :5
    ]
    huge_keys = [m for w, m in by_what.items() if w == f"key count = {1 << 63}"]
    assert huge_keys and all("the limit is 4096" in m for m in huge_keys)


def test_every_malformed_adapter_is_refused_with_model_format_error(adapter_checked):
    corpus, results = adapter_checked
    assert len(corpus) > 50
    bad = [f"{what}: {results.get(p, {'result': 'no result'})['result']} {results.get(p, {}).get('message', '')[:200]}"
           for p, what in corpus.items() if results.get(p, {}).get("result") != "ModelFormatError"]  # fmt: skip
    assert not bad, f"{len(bad)} of {len(corpus)} adapter cases not refused cleanly:\n" + "\n".join(bad[:40])
    truncated = [results[p]["message"] for p, w in corpus.items() if w.startswith("truncated at") and "at 0 " not in w]
    assert truncated and all("truncated" in m or "past the end" in m or "bad magic" in m for m in truncated), truncated[
        :5
    ]
