"""`edge bench [MODEL] [-c CTX] [--parallel N]`: prompt and generation speed of a model on this device.

Opens the model as `edge serve` would (the profile's threads, the given context and slots), measures
prompt processing (pp: a fresh prompt of --prompt-tokens evaluated in one go) and generation (tg:
--tokens greedy tokens after a short prompt, all slots at once when --parallel > 1), prints the
medians, and records them in this device's calibration (profiles.calibration) for the profile used.
`edge-quantize plan` and `edge serve` predict speeds from that record from then on.

It refuses to run while a server listens on the configured address: the two would share the cores,
the server's answers would slow down and the figures would be wrong.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from edge.config import Settings
from edge.errors import UnavailableError

WARMUP_TOKENS = 16


@dataclass(frozen=True)
class BenchResult:
    model: str
    file: str
    type: str
    profile: str
    threads: int
    n_ctx: int
    parallel: int
    pp_tokens: int
    tg_tokens: int
    pp_tps: list[float]
    tg_tps: list[float]

    @property
    def pp(self) -> float:
        return _median(self.pp_tps)

    @property
    def tg(self) -> float:
        return _median(self.tg_tps)


def refuse_if_serving(host: str, port: int) -> None:
    """UnavailableError when something accepts connections on host:port (an `edge serve`, an Ollama)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port))
        except OSError:
            return
    raise UnavailableError(
        f"a server is listening on {host}:{port} (edge serve?); a benchmark now would slow its answers "
        f"and measure a shared CPU: stop the server first, or name its address with --host/--port if "
        f"this is another one"
    )


def bench_command(
    model: str | None = typer.Argument(None, help="store name or .gguf path (default: the store's default model)"),
    ctx: int = typer.Option(2048, "--ctx", "-c", min=256, help="context tokens per slot"),
    parallel: int = typer.Option(1, "--parallel", "-np", min=1, help="slots generating at once (concurrency)"),
    threads: int | None = typer.Option(None, help="CPU threads [default: the profile's]"),
    profile: str | None = typer.Option(None, help="hardware profile name or .toml path [default: detected]"),
    prompt_tokens: int = typer.Option(512, "--prompt-tokens", "-p", min=8, help="tokens of the pp prompt"),
    tokens: int = typer.Option(128, "--tokens", "-n", min=8, help="tokens generated per tg run"),
    repeats: int = typer.Option(3, "--repeats", "-r", min=1, help="timed runs of each"),
    models: Path | None = typer.Option(None, "--models", help="folder holding the model files [env EDGE_MODELS]"),
    host: str | None = typer.Option(None, help="address a server would listen on [env EDGE_HOST]"),
    port: int | None = typer.Option(None, help="port a server would listen on [env EDGE_PORT]"),
    no_record: bool = typer.Option(False, "--no-record", help="print only; keep the calibration as it is"),
    as_json: bool = typer.Option(False, "--json", help="print the figures as JSON"),
) -> None:
    """Measure prompt (pp) and generation (tg) speed here and record them for the planner."""
    from edge.fit import server_budget
    from edge.server.state import resolve_target
    from edge.store import ModelStore

    settings = Settings.from_env(model=model, models_dir=models, profile=profile, threads=threads, host=host, port=port)
    refuse_if_serving(settings.host, settings.port)
    if prompt_tokens + tokens + WARMUP_TOKENS > ctx:
        raise typer.BadParameter(f"--prompt-tokens + --tokens must fit the context ({ctx})")
    budget = server_budget(settings)
    n_threads = settings.threads or budget.threads
    store = ModelStore(settings.home, models_dir=settings.models_dir)
    target = resolve_target(settings, store)
    _say(f"edge bench: {target.name} ({target.path.name}), {n_threads} threads, context {ctx}, {parallel} slot(s)")
    result = asyncio.run(
        measure(target.path, target.name, budget.profile.name, n_threads, ctx, parallel, prompt_tokens, tokens, repeats)
    )
    if as_json:
        typer.echo(json.dumps({**asdict(result), "pp_median": result.pp, "tg_median": result.tg}, indent=2))
    else:
        typer.echo(
            f"{result.model} {result.type}: pp{prompt_tokens} {result.pp:.1f} t/s, tg{tokens} {result.tg:.1f} t/s "
            f"({n_threads} threads, {parallel} slot(s), context {ctx}; median of {repeats})"
        )
    if not no_record:
        path = record(result, settings)
        _say(f"edge bench: calibration recorded in {path} (profile {result.profile})")


async def measure(
    path: Path,
    name: str,
    profile: str,
    threads: int,
    n_ctx: int,
    parallel: int,
    pp_tokens: int,
    tg_tokens: int,
    repeats: int,
) -> BenchResult:
    from edge.engine import open_engine
    from edge.engine.base import Finish, SamplingParams

    engine = open_engine(path, name=name, n_ctx=n_ctx, n_parallel=parallel, n_threads=threads, queue_size=parallel)
    try:
        unit = engine.tokenize(" the quick brown fox jumps over the lazy dog", add_special=False)

        def prompt(i: int, n: int) -> list[int]:  # a fresh prefix each run: no slot reuses another's KV
            head = engine.tokenize(f"Run {i}: {i * 7919 % 10007}.", add_special=False)
            return (head + unit * (n // len(unit) + 1))[:n]

        async def run(ids: list[int], max_tokens: int) -> Finish:
            params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
            events = [e async for e in engine.generate(ids, params, stream=False)]
            return next(e for e in events if isinstance(e, Finish))

        await run(prompt(0, 32), WARMUP_TOKENS)  # pages the weights in, builds the graphs
        pp, tg = [], []
        for i in range(1, repeats + 1):
            fin = await run(prompt(1000 + i, pp_tokens), 1)
            pp.append(fin.prompt_tokens / (fin.prompt_eval_ns / 1e9))
            _say(f"  pp {i}/{repeats}: {pp[-1]:.1f} t/s")
            t0 = time.perf_counter()
            fins = await asyncio.gather(*(run(prompt(2000 + i * parallel + s, 16), tg_tokens) for s in range(parallel)))
            wall = time.perf_counter() - t0
            if parallel == 1:
                tg.append(fins[0].completion_tokens / (fins[0].eval_ns / 1e9))
            else:  # all slots together: tokens over the wall time of the wave
                tg.append(sum(f.completion_tokens for f in fins) / wall)
            _say(f"  tg {i}/{repeats}: {tg[-1]:.1f} t/s")
        quant = engine.info.quantization
    finally:
        engine.close()
    return BenchResult(name, str(path), quant, profile, threads, n_ctx, parallel, pp_tokens, tg_tokens, pp, tg)


def record(result: BenchResult, settings: Settings) -> Path:
    """Save `result` as this device's calibration record for its model and profile."""
    from profiles import calibration
    from profiles.plan.planner import SPEED_AT_TOKENS, bytes_by_type, kv_bytes
    from profiles.plan.shape import read_model_shape

    shape = read_model_shape(Path(result.file))
    rec = calibration.Record(
        model=calibration.model_key(shape),
        profile=result.profile,
        type=result.type,
        threads=result.threads,
        n_ctx=result.n_ctx,
        parallel=result.parallel,
        tg_tps=round(result.tg, 2),
        pp_tps=round(result.pp, 2),
        bytes_by_type=bytes_by_type(shape, "AS_IS"),
        kv_read_bytes=kv_bytes(shape, min(result.n_ctx, SPEED_AT_TOKENS), 1, True),
        n_layer=shape.n_layer,
        file=result.file,
    )
    dev_id, device = calibration.this_device()
    return calibration.save(rec, calibration.calibration_path(settings.home, dev_id), device)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
