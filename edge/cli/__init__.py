"""`edge serve | run | models | profile | bench`: thin commands over edge.server, edge.engine and edge.store.

`main()` maps every error through edge.errors.report_and_exit: a one-line message, never a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import typer

from edge.config import Settings
from edge.errors import report_and_exit

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Serve GGUF models offline over the OpenAI and Ollama APIs.",
)


@app.command()
def serve(
    model: str | None = typer.Argument(
        None,
        help="store name (smollm2, an alias...) or a .gguf path to preload and keep loaded; "
        "default: none, every model in the store loads when a request names it",
    ),
    host: str | None = typer.Option(None, help="address to bind [env EDGE_HOST; default 127.0.0.1]"),
    port: int | None = typer.Option(None, help="port [env EDGE_PORT; default 11434, Ollama's]"),
    models: Path | None = typer.Option(
        None, "--models", help="folder holding the model files [env EDGE_MODELS; default ~/.edge/models]"
    ),
    profile: str | None = typer.Option(None, help="hardware profile name or .toml path: default threads and slots"),
    parallel: int | None = typer.Option(None, help="slots decoded together [env EDGE_PARALLEL]"),
    ctx: int | None = typer.Option(None, help="context tokens per slot [env EDGE_CTX]"),
    api_key: str | None = typer.Option(None, help="require this key on every route but /health [env EDGE_API_KEY]"),
    queue: int | None = typer.Option(None, help="requests that may wait for a slot before 503 [env EDGE_QUEUE]"),
    threads: int | None = typer.Option(None, help="CPU threads [env EDGE_THREADS; default physical cores]"),
    api_key_file: Path | None = typer.Option(None, help="read the API key from this file [env EDGE_API_KEY_FILE]"),
    allow_host: list[str] | None = typer.Option(
        None, help="also accept this Host header name (repeatable) [env EDGE_ALLOWED_HOSTS]"
    ),
    cors_origin: list[str] | None = typer.Option(
        None, help="browser origin allowed to call the API (repeatable; default none) [env EDGE_CORS_ORIGINS]"
    ),
    request_timeout: float | None = typer.Option(
        None, help="seconds one request may take; 0: none [env EDGE_REQUEST_TIMEOUT; default 600]"
    ),
    read_timeout: float | None = typer.Option(
        None, help="seconds a client may take to send its request [env EDGE_READ_TIMEOUT; default 30]"
    ),
    cache_ram: int | None = typer.Option(
        None,
        help="MiB of earlier prompts' KV states kept in memory; 0: off [env EDGE_CACHE_RAM; default: from the budget]",
    ),
    cache_dir: Path | None = typer.Option(
        None,
        help="folder where cached prompt states persist across restarts [env EDGE_CACHE_DIR; default ~/.edge/cache/prompts]",
    ),
    spec: bool | None = typer.Option(
        None,
        "--spec/--no-spec",
        help="speculative decoding with drafts copied from the request's own prompt and output "
        "[env EDGE_SPEC; default on]",
    ),
    uds: Path | None = typer.Option(
        None, "--uds", help="also listen on this Unix socket (mode 0660), for robots and kiosks"
    ),
    tcp: bool = typer.Option(True, "--tcp/--no-tcp", help="listen on TCP (--no-tcp: only on --uds)"),
    force: bool = typer.Option(False, "--force", help="load even when the planner says the model does not fit"),
    pin: list[str] | None = typer.Option(
        None, "--pin", help="keep this model loaded for the server's life (repeatable) [env EDGE_PIN]"
    ),
    keep_alive: str | None = typer.Option(
        None,
        "--keep-alive",
        help="how long an idle model stays loaded: 5m, 1h30m, seconds; 0: unload after each request; "
        "negative: forever [env EDGE_KEEP_ALIVE; default 5m]",
    ),
    memory_budget: str | None = typer.Option(
        None,
        "--memory-budget",
        help="memory the loaded models may use, e.g. 2GiB [env EDGE_MEMORY_BUDGET; default: the profile's]",
    ),
) -> None:
    """Serve the models of the store over HTTP (OpenAI /v1/... and Ollama /api/...)."""
    from edge.server import serve as run_server
    from edge.server.state import resolve_target

    settings = Settings.from_env(
        model=model,
        host=host,
        port=port,
        models_dir=models,
        profile=profile,
        parallel=parallel,
        ctx=ctx,
        api_key=api_key,
        queue_size=queue,
        threads=threads,
        api_key_file=api_key_file,
        allowed_hosts=allow_host or None,
        cors_origins=cors_origin or None,
        request_timeout=request_timeout,
        read_timeout=read_timeout,
        pin=pin or None,
        keep_alive=keep_alive,
        memory_budget=memory_budget,
        cache_ram=cache_ram,
        cache_dir=cache_dir,
        spec=spec,
    )
    from edge.fit import server_budget, server_settings

    budget = server_budget(settings, force=force)
    settings = server_settings(settings, budget)
    print(f"edge: {budget.why}", file=sys.stderr, flush=True)
    store = _store(settings)
    target = resolve_target(settings, store) if settings.model else None  # a wrong name fails here
    # serve() plans the preloaded model before binding: one that does not fit exits 5
    run_server(settings, uds=uds, tcp=tcp, store=store, target=target, budget=budget)


from edge.cli.bench import bench_command  # noqa: E402
from edge.cli.profile import profile_command  # noqa: E402

app.command("profile")(profile_command)
app.command("bench")(bench_command)


@app.command()
def run(
    model: str = typer.Argument(..., help="store name or .gguf path"),
    prompt: str = typer.Argument(..., help="the user message"),
    system: str | None = typer.Option(None, help="a system message (default: the model template's own)"),
    models: Path | None = typer.Option(None, "--models", help="folder holding the model files [env EDGE_MODELS]"),
    max_tokens: int = typer.Option(512, min=1, help="most tokens to generate"),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy (reproducible)"),
    ctx: int | None = typer.Option(None, help="context tokens"),
) -> None:
    """Answer one prompt, streaming to the terminal (no server)."""
    settings = Settings.from_env(model=model, models_dir=models, ctx=ctx)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    asyncio.run(_run_once(settings, messages, max_tokens, temperature))


@app.command("models")
def list_models(
    models: Path | None = typer.Option(None, "--models", help="folder holding the model files [env EDGE_MODELS]"),
) -> None:
    """List the models in the store (name, size, format, file)."""
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "size", "format", "bundled", "path")
    for e in _store(Settings.from_env(models_dir=models)).list():
        table.add_row(e.name, f"{e.size_bytes / 2**20:.1f} MiB", e.format, "yes" if e.bundled else "", str(e.path))
    Console().print(table)


async def _run_once(settings: Settings, messages: list[dict], max_tokens: int, temperature: float) -> None:
    from edge.chat.templates import ChatTemplate
    from edge.engine import open_engine
    from edge.engine.base import Delta, Finish, SamplingParams
    from edge.server.prompts import chat_prompt
    from edge.server.state import resolve_target

    target = resolve_target(settings, _store(settings))
    engine = open_engine(target.path, name=target.name, n_ctx=settings.ctx, n_threads=settings.threads)
    try:
        info = engine.info
        template = ChatTemplate.for_model(info)
        ids = chat_prompt(engine, template, messages)
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
        async for ev in engine.generate(ids, params):
            if isinstance(ev, Delta):
                sys.stdout.write(ev.text)
                sys.stdout.flush()
            elif isinstance(ev, Finish):
                sys.stdout.write("\n")
                print(f"[{ev.completion_tokens} tokens, {_rate(ev)}, finish: {ev.reason}]", file=sys.stderr)
    finally:
        engine.close()


def _store(settings: Settings):
    from edge.store import ModelStore

    return ModelStore(settings.home, models_dir=settings.models_dir)


def _rate(fin) -> str:
    return f"{fin.completion_tokens / (fin.eval_ns / 1e9):.1f} tokens/s" if fin.eval_ns else "n/a"


BUILTIN_COMMANDS = {"serve", "run", "models", "profile", "bench"}


def add_plugin_commands(args: list[str]) -> None:
    """Command groups of higher layers (`edge bundle` from firmware), found by entry point.

    The runtime never imports them: a package registers a typer app under the `edge.commands`
    entry-point group. Skipped for the built-in commands, so `edge serve` starts without the scan.
    """
    if args and args[0] in BUILTIN_COMMANDS:
        return
    from importlib.metadata import entry_points

    for ep in entry_points(group="edge.commands"):
        app.add_typer(ep.load(), name=ep.name)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        if _serve_quickly(args):
            return
        add_plugin_commands(args)
        rc = app(args=argv, standalone_mode=False, prog_name="edge")  # click's exit code for --help
    except SystemExit:
        raise
    except BaseException as exc:
        if isinstance(exc, typer.Abort):  # Ctrl-C inside click
            report_and_exit(KeyboardInterrupt())
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # a usage error (typer vendors click)
            exc.show()
            raise SystemExit(exc.exit_code) from None
        report_and_exit(exc)
    if isinstance(rc, int) and rc:
        raise SystemExit(rc)


def _serve_quickly(args: list[str]) -> bool:
    """`edge serve` with a plain command line runs without typer's parsing (edge.cli.quickargs: the
    same arguments, read from the same declarations); False for anything else, which typer parses,
    so help and usage errors stay typer's."""
    if not args or args[0] != "serve":
        return False
    from edge.cli.quickargs import quick_kwargs

    kwargs = quick_kwargs(serve, args[1:])
    if kwargs is None:
        return False
    try:  # what typer does with these when it runs the command
        serve(**kwargs)
    except EOFError as exc:
        print(file=sys.stderr)
        raise typer.Abort() from exc
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        raise SystemExit(1) from None
    return True


if __name__ == "__main__":
    main()
