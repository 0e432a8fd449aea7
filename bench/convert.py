"""Benchmark: our converter and quantizer against llama.cpp's, in one run.

    python bench/convert.py [--repeats 3] [--json]

1. SmolLM2-135M-Instruct as a Hugging Face f32 checkpoint (made once by `edge-quantize unpack`
   of the bundled GGUF) -> F16 GGUF: `edge-quantize convert` vs the sdist's
   `convert_hf_to_gguf.py --outtype f16`, interleaved, wall time and peak RSS of each process.
2. Q4_K_M: our `--to f16,q4_k_m` output's sha256 vs `llama-quantize` run on OUR F16 file
   (goal: identical bytes), and the time of a lone quantization, ours
   (`edge-quantize convert F16.gguf --to q4_k_m`) vs llama-quantize, interleaved.
Ratios are ours/anchor on the median of the repeats (wall time: what the user waits for).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from common import Row, console

ANCHOR = "llama.cpp"


def unpacked_smollm2(work: Path) -> Path:
    """The f32 HF checkpoint of the bundled SmolLM2 (made once, reused)."""
    hf = work / "smollm2-hf"
    if (hf / "config.json").is_file():
        return hf
    gguf_path = common.bundled_model("smollm2")
    console.log(f"unpacking {gguf_path.name} -> {hf}")
    cmd = [common.venv_script("edge-quantize"), "unpack", gguf_path, "-o", hf, "--force"]
    common.check(common.run_measured(cmd), "edge-quantize unpack")
    return hf


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def one_output(folder: Path, suffix: str) -> Path:
    found = sorted(folder.glob(f"*{suffix}.gguf"), key=lambda p: p.name.lower())
    found = [p for p in found if p.name.lower().endswith(f"{suffix}.gguf")]
    if len(found) != 1:
        raise SystemExit(f"expected one *{suffix}.gguf in {folder}, found {[p.name for p in found]}")
    return found[0]


_HELP: str | None = None


def no_eval_flag() -> list[str]:
    """The quality report after a multi-type convert is its own feature: not timed here."""
    global _HELP
    if _HELP is None:
        _HELP = subprocess.run(
            [str(common.venv_script("edge-quantize")), "convert", "--help"], capture_output=True, text=True
        ).stdout
    return ["--no-eval"] if "--no-eval" in _HELP else []


def ours_convert(hf: Path, types: str, out: Path) -> common.RunResult:
    cmd = [
        common.venv_script("edge-quantize"),
        "convert",
        hf,
        "--to",
        types,
        "-o",
        fresh(out),
        "--force",
        "--quiet",
        *no_eval_flag(),
    ]
    return common.check(common.run_measured(cmd), f"edge-quantize convert --to {types}")


def anchor_convert(hf: Path, out: Path) -> common.RunResult:
    llama = common.llama_cpp_source()
    env = dict(os.environ, PYTHONPATH=str(llama / "gguf-py"), HF_HUB_OFFLINE="1")
    cmd = [
        sys.executable,
        llama / "convert_hf_to_gguf.py",
        hf,
        "--outtype",
        "f16",
        "--outfile",
        fresh(out) / "smollm2-f16.gguf",
    ]
    return common.check(common.run_measured(cmd, env=env), "convert_hf_to_gguf.py")


def interleaved(n: int, runs: dict) -> dict[str, list[common.RunResult]]:
    """Run each callable n times, alternating which goes first, so drift hits both alike."""
    results: dict[str, list[common.RunResult]] = {k: [] for k in runs}
    names = list(runs)
    for i in range(n):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            r = runs[name]()
            console.log(f"  [{i + 1}/{n}] {name}: {r.seconds:.2f} s, peak RSS {r.peak_rss_mb:.0f} MB")
            results[name].append(r)
    return results


def tensors_equal(a: Path, b: Path) -> tuple[int, int]:
    """(equal, total) over the tensors of a, compared by name with b's."""
    from gguf import GGUFReader

    tb = {t.name: t for t in GGUFReader(b).tensors}
    ta = GGUFReader(a).tensors
    same = sum(
        1
        for t in ta
        if t.name in tb and t.tensor_type == tb[t.name].tensor_type and np.array_equal(t.data, tb[t.name].data)
    )  # raw block bytes compared
    return same, len(ta)


def bench_f16(hf: Path, work: Path, n: int) -> tuple[list[Row], dict]:
    console.rule("HF f32 -> F16 GGUF")
    res = interleaved(
        n,
        {
            "ours": lambda: ours_convert(hf, "f16", work / "ours-f16"),
            ANCHOR: lambda: anchor_convert(hf, work / "anchor-f16"),
        },
    )
    same, total = tensors_equal(one_output(work / "ours-f16", "f16"), one_output(work / "anchor-f16", "f16"))
    med = {k: common.median([r.seconds for r in v]) for k, v in res.items()}
    rss = {k: max(r.peak_rss_mb for r in v) for k, v in res.items()}
    rows = [
        Row(
            "HF->F16 wall time",
            "s",
            med["ours"],
            {ANCHOR: med[ANCHOR]},
            "<= 1.0x",
            f"median of {n}; convert_hf_to_gguf.py imports torch, that is part of its cost",
        ),
        Row(
            "HF->F16 peak RSS",
            "MB",
            rss["ours"],
            {ANCHOR: rss[ANCHOR]},
            "",
            "max over the repeats of each process (GNU time %M)",
        ),
    ]
    extra = {
        "f16_tensors_identical": f"{same}/{total}",
        "f16_seconds": {k: [r.seconds for r in v] for k, v in res.items()},
    }
    console.log(f"F16 tensors byte-identical to convert_hf_to_gguf.py's: {same}/{total}")
    return rows, extra


def llama_quantize(src: Path, out: Path) -> common.RunResult:
    cmd = [common.anchor_binary("llama-quantize"), src, fresh(out) / "smollm2-q4_k_m.gguf", "Q4_K_M"]
    return common.check(common.run_measured(cmd), "llama-quantize")


def bench_q4km(hf: Path, work: Path, n: int) -> tuple[list[Row], dict]:
    console.rule("Q4_K_M: bytes and time")
    both = ours_convert(hf, "f16,q4_k_m", work / "ours-q")
    console.log(f"  ours --to f16,q4_k_m: {both.seconds:.2f} s")
    ours_f16 = one_output(work / "ours-q", "f16")
    ours_q = one_output(work / "ours-q", "q4_k_m")
    llama_quantize(ours_f16, work / "anchor-q")
    digests = {"ours": common.sha256(ours_q), ANCHOR: common.sha256(one_output(work / "anchor-q", "q4_k_m"))}
    identical = digests["ours"] == digests[ANCHOR]
    console.log(
        f"  sha256 ours {digests['ours'][:16]}… llama-quantize {digests[ANCHOR][:16]}… "
        f"-> {'IDENTICAL' if identical else 'DIFFERENT'}"
    )
    res = interleaved(
        n,
        {
            "ours": lambda: ours_convert(ours_f16, "q4_k_m", work / "ours-requant"),
            ANCHOR: lambda: llama_quantize(ours_f16, work / "anchor-q"),
        },
    )
    med = {k: common.median([r.seconds for r in v]) for k, v in res.items()}
    rows = [
        Row(
            "Q4_K_M sha256 identical",
            "bool",
            float(identical),
            {ANCHOR: 1.0},
            "identical",
            f"ours {digests['ours']} / llama-quantize {digests[ANCHOR]}",
        ),
        Row(
            "F16->Q4_K_M wall time",
            "s",
            med["ours"],
            {ANCHOR: med[ANCHOR]},
            "",
            f"median of {n}; ours = edge-quantize convert F16.gguf --to q4_k_m (process start to exit)",
        ),
        Row(
            "F16->Q4_K_M peak RSS",
            "MB",
            max(r.peak_rss_mb for r in res["ours"]),
            {ANCHOR: max(r.peak_rss_mb for r in res[ANCHOR])},
        ),
        Row("HF->F16+Q4_K_M wall time", "s", both.seconds, {}, "", "one run, for reference"),
    ]
    return rows, {"q4_k_m_sha256": digests, "q4_k_m_identical": identical}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", "-n", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    args = ap.parse_args(argv)
    common.exit_cleanly_on_sigterm()
    work = common.work_dir() / "convert"
    work.mkdir(parents=True, exist_ok=True)
    hf = unpacked_smollm2(common.work_dir())
    load = [common.warn_if_busy()]
    rows1, extra1 = bench_f16(hf, work, args.repeats)
    rows2, extra2 = bench_q4km(hf, work, args.repeats)
    load.append(common.warn_if_busy())
    rows = rows1 + rows2
    if args.json:
        print(common.rows_json(rows, [ANCHOR], {**extra1, **extra2, "load_average": load, "work_dir": str(work)}))
    else:
        common.print_table("edge-quantize vs llama.cpp (SmolLM2-135M)", rows, [ANCHOR])
    return 0 if extra2["q4_k_m_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
