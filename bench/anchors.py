"""Build the benchmark anchors (llama.cpp's own tools) OUTSIDE the repo.

The anchors are built from the llama.cpp vendored in the llama-cpp-python sdist we depend on
(0.3.36, llama.cpp 0c1e570), so both sides of every ratio run the same kernels. Nothing of
llama.cpp is copied into the repo: the source lives in a cache folder, the build beside it.

    python bench/anchors.py            # configure + build (about 10 minutes on 2 cores)
    python bench/anchors.py --check    # print where the binaries are, build nothing

Where: $EDGE_ANCHORS (default /work/anchors/build) for the build; the sdist is looked for in
$EDGE_ANCHORS_SRC, then beside the build folder, and fetched with
`pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36` when absent.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",  # the anchors get the best kernels this CPU has
    "-DLLAMA_CURL=OFF",  # deprecated in 0c1e570 but harmless; nothing here may download
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",  # the web UI would need npm ...
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # ... or a download from a hub: never
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)


def fetch_sdist(dest: Path) -> Path:
    """Download and unpack the sdist into dest; return the unpacked folder."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={common.SDIST_VERSION}",
            "-d",
            str(dest),
        ],
        check=True,
    )
    archive = next(dest.glob(f"llama_cpp_python-{common.SDIST_VERSION}.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / f"llama_cpp_python-{common.SDIST_VERSION}"


def llama_cpp_source() -> Path:
    """The vendored llama.cpp folder, fetching the sdist once if no copy is found."""
    src = common.sdist_dir()
    if src is None:
        src = fetch_sdist(common.anchors_build_dir().parent)
    llama = src / "vendor" / "llama.cpp"
    if not (llama / "CMakeLists.txt").is_file():
        raise SystemExit(f"{llama} has no CMakeLists.txt: remove {src} and run again to refetch")
    return llama


def build(jobs: int) -> None:
    src = llama_cpp_source()
    build_dir = common.anchors_build_dir()
    if shutil.which("cmake") is None:
        raise SystemExit("cmake not found: install cmake (and a C++ compiler) first")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    print(f"configuring {src} -> {build_dir}", flush=True)
    subprocess.run(["cmake", "-S", str(src), "-B", str(build_dir), *gen, *CMAKE_FLAGS], check=True)
    print(f"building {', '.join(common.ANCHOR_TOOLS)} with -j{jobs}", flush=True)
    subprocess.run(
        ["cmake", "--build", str(build_dir), "--config", "Release", f"-j{jobs}", "--target", *common.ANCHOR_TOOLS],
        check=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report what is built")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    if not args.check:
        build(args.jobs)
    missing = []
    for tool in common.ANCHOR_TOOLS:
        path = common.anchor_binary(tool, required=False)
        print(f"{tool:18s} {path or 'MISSING'}")
        missing += [tool] if path is None else []
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
