"""Coverage-guided fuzzing of edge.formats.validate.validate_gguf with atheris.

    python -m tests.support.fuzz.fuzz_validate SEED_DIR [atheris/libFuzzer flags, e.g. -max_total_time=60]

Each input is written to a file and validated; ModelFormatError is the expected outcome, any other
exception is a finding (atheris stops and saves the input as crash-*). The seed corpus is the real
bundled headers (tests/edge/formats/test_fuzz_validate.py writes them, cut to their key/value and tensor
tables). Run it under resource limits (RLIMIT_AS, -timeout) so a hang or a blow-up is a finding too.
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["edge.formats.validate", "edge.formats.gguf"]):
    from edge.errors import ModelFormatError
    from edge.formats.validate import validate_gguf

_PATH = os.path.join(tempfile.mkdtemp(prefix="fuzz-validate-"), "input.gguf")


def test_one_input(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        validate_gguf(_PATH)
    except ModelFormatError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
