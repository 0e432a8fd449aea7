"""Benchmark: cold start, process start to the first streamed token, `edge serve` against llama-server.

    python bench/coldstart.py [--samples 10] [--model smollm2|gemma3] [--json]

Each sample starts a fresh server on the same GGUF file (2 threads, context 2048, one slot) the way
a user would, then sends one streaming /v1/completions request as soon as the port accepts it
(retried every 5 ms while it is refused or answers 503, as a client waiting for a booting kiosk
would): the figure is Popen to the first chunk carrying text. Ours and llama-server alternate
(A B A B ...), so load from other jobs falls on both.

For ours, each phase is timed from the lines `edge serve` prints on stderr, stamped as they arrive:
  cli     Popen -> "edge: profile ..."    interpreter, the CLI, settings and profile detection;
  bind    Popen -> "edge: serving ..."    the HTTP stack imported, the app built, the socket bound;
  load    Popen -> "edge: ready in ..."   the model opened (in a thread, while the HTTP stack imports);
  first   Popen -> the first token.
Goal: ours / llama-server <= 1.5 (medians).

Python's compiled bytecode: an installed wheel carries it (pip compiles at install), and a source
checkout writes it to __pycache__ on its first run; with PYTHONDONTWRITEBYTECODE set (as some shells
and CI set it) every start would compile all of edge again, which no device does. So ours runs with
that variable removed and its bytecode kept under the bench's work folder (PYTHONPYCACHEPREFIX), filled
by the unmeasured first start; `--compile-each-start` keeps the caller's environment instead.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import client
import common
import httpx
import servers
from common import Row, console, median

ANCHORS = ["llama-server"]
CTX = 2048
PROMPT = "Count from 1 to 20, separated by commas: 1, 2, 3,"
PHASES = {  # phase -> the start of the stderr line that ends it
    "cli": "edge: profile",
    "bind": "edge: serving",
    "load": "edge: ready in",
}


class StampedLog:
    """Reads a process's output in a thread; the perf_counter time each line arrived."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.lines.append((time.perf_counter(), raw.decode(errors="replace").rstrip()))

    def first(self, prefix: str) -> float | None:
        return next((t for t, line in list(self.lines) if line.startswith(prefix)), None)

    def tail(self) -> str:
        return "\n".join(line for _, line in self.lines[-25:])


def first_token_when_up(run: servers.Running, log: StampedLog, timeout: float = 120) -> float:
    """Retry one streaming request until the server takes it; the time its first token arrived."""
    deadline = run.started + timeout
    while time.perf_counter() < deadline:
        if run.proc.poll() is not None:
            raise SystemExit(f"{run.kind.name} exited with {run.proc.returncode}:\n{log.tail()}")
        if not run.model_id:  # ours names the model it keeps in its "serving" line, printed before it binds
            serving = next((line for _, line in list(log.lines) if line.startswith(PHASES["bind"])), "")
            if not serving:
                time.sleep(0.005)
                continue
            run.model_id = serving.removeprefix(PHASES["bind"]).split(" (kept loaded)")[0].strip()
        try:
            return client.stream_first_token(run, PROMPT, max_tokens=4).t_first
        except (httpx.TransportError, RuntimeError) as exc:  # refused, reset, or 503 while loading
            if isinstance(exc, RuntimeError) and " 503" not in str(exc) and "answered 5" not in str(exc):
                raise
        time.sleep(0.005)
    raise SystemExit(f"{run.kind.name}: no token after {timeout:.0f} s:\n{log.tail()}")


def server_env(kind_name: str, compile_each_start: bool) -> dict[str, str]:
    env = servers._env()
    if kind_name == "ours" and not compile_each_start:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(common.work_dir() / "coldstart-pycache")
    return env


def one_cold_start(kind_name: str, model: Path, compile_each_start: bool = False) -> dict[str, float]:
    """Start a fresh server, wait for the first token, stop it; seconds from Popen per phase."""
    kind = servers.KINDS[kind_name]
    port = common.free_port()
    cmd = kind.command(model, port, 1, CTX)
    env = server_env(kind_name, compile_each_start)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    model_id = "" if kind_name == "ours" else "default"  # llama-server serves any name
    run = servers.Running(kind, proc, f"http://127.0.0.1:{port}", started, model_id=model_id)
    log = StampedLog(proc)
    try:
        out = {"first": first_token_when_up(run, log) - started}
        if kind_name == "ours":
            deadline = time.perf_counter() + 5  # the ready line may trail the token by a moment
            while log.first(PHASES["load"]) is None and time.perf_counter() < deadline:
                time.sleep(0.005)
            for phase, prefix in PHASES.items():
                t = log.first(prefix)
                out[phase] = (t - started) if t is not None else float("nan")
        return out
    finally:
        common.stop(proc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", "-n", type=int, default=10, help="cold starts per server (default 10)")
    ap.add_argument("--model", choices=("smollm2", "gemma3"), default="smollm2")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    ap.add_argument(
        "--compile-each-start",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE if set: ours compiles its modules at every start",
    )
    args = ap.parse_args(argv)
    common.exit_cleanly_on_sigterm()
    model = common.bundled_model(args.model)
    kinds = ["ours", "llama-server"]
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    load = [common.warn_if_busy()]
    for kind in kinds:  # one unmeasured start each: the file and the libraries into the page cache
        one_cold_start(kind, model, args.compile_each_start)
    for i in range(args.samples):
        order = kinds if i % 2 == 0 else kinds[::-1]
        for kind in order:
            samples[kind].append(one_cold_start(kind, model, args.compile_each_start))
        ours, anchor = samples["ours"][-1], samples["llama-server"][-1]
        console.log(
            f"sample {i + 1}: ours {ours['first']:.3f} s (cli {ours['cli']:.3f}, bind {ours['bind']:.3f}, "
            f"load {ours['load']:.3f}), llama-server {anchor['first']:.3f} s"
        )
    load.append(common.warn_if_busy())
    med = {k: {p: median([s[p] for s in samples[k]]) for p in samples[k][0]} for k in kinds}
    rows = [
        Row(
            f"{args.model} cold start to first token",
            "s",
            med["ours"]["first"],
            {"llama-server": med["llama-server"]["first"]},
            "ours/llama-server <= 1.5",
            f"{args.samples} samples each, interleaved; ours' phases (median s from process start): "
            + ", ".join(f"{p} {med['ours'][p]:.3f}" for p in PHASES),
        )
    ]
    rows += [Row(f"  ours: {phase} (from process start)", "s", med["ours"][phase]) for phase in PHASES]
    if args.json:
        print(
            common.rows_json(
                rows,
                ANCHORS,
                {
                    "samples": samples,
                    "medians": med,
                    "load_average": load,
                    "compile_each_start": args.compile_each_start,
                },
            )
        )
    else:
        common.print_table(f"cold start, {model.name}", rows, ANCHORS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
