"""A bounded coverage-guided fuzz run (atheris, ~60 s) of the GGUF validator: no crash, no hang.

Seeds: the real bundled headers (SmolLM2's whole key/value + tensor table; Gemma-3's with the
vocabulary cut short so the fuzzer spends its time on structure). The run is a child process under
RLIMIT_AS, with libFuzzer's per-input -timeout and -rss_limit_mb; any finding fails the test with
the fuzzer's report.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fuzz.gguf_fields import VT, enc_array, parse

atheris = pytest.importorskip("atheris", reason="pip install atheris (dev extra)")

FUZZ_SECONDS = 60
REPO = Path(__file__).resolve().parents[3]


def _small_seed(path: Path, n_tokens: int) -> bytes:
    """The real header with its string arrays cut to n_tokens items and no data section."""
    lay, _, _ = parse(path)
    lay = lay.copy()
    for i, (key, vt, raw) in enumerate(lay.kv):
        if vt == VT.ARRAY and raw[:4] == bytes([VT.STRING, 0, 0, 0]):
            lay.kv[i] = (key, vt, enc_array(VT.STRING, lay.strings(key.decode())[:n_tokens]))
    return lay.header()


@pytest.fixture(scope="module")
def seeds(smollm2_path, gemma3_path, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("seeds")
    (d / "smollm2-header").write_bytes(_small_seed(smollm2_path, 300))
    (d / "gemma3-header").write_bytes(_small_seed(gemma3_path, 300))
    (d / "tiny").write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(16))
    return d


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


@pytest.mark.slow
def test_fuzz_validator_60s_no_crash_no_hang(seeds, tmp_path):
    cmd = [sys.executable, "-m", "tests.support.fuzz.fuzz_validate", str(tmp_path / "corpus"), str(seeds),
           f"-max_total_time={FUZZ_SECONDS}", "-timeout=10", "-rss_limit_mb=2048", "-max_len=65536",
           f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"]  # fmt: skip
    (tmp_path / "corpus").mkdir()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=FUZZ_SECONDS + 120, preexec_fn=_limit)
    findings = sorted(
        p.name for p in tmp_path.glob("*-*") if p.name.split("-")[0] in ("crash", "timeout", "oom", "leak")
    )
    assert proc.returncode == 0 and not findings, f"{findings}\n{proc.stderr[-4000:]}"
    runs = [line for line in proc.stderr.splitlines() if "stat::number_of_executed_units" in line]
    assert runs and int(runs[0].split()[-1]) > 1000, proc.stderr[-2000:]  # it really ran
