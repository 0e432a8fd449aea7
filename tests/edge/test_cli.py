"""`edge serve | run | models` as a user runs them: real processes, exit codes, messages."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import httpx
import pytest

from edge.config import DEFAULT_HOST, DEFAULT_PORT, Settings
from edge.errors import BadRequestError
from tests.support.live import LOAD_TIMEOUT, edge_env, start_server


def edge(home, *args: str, timeout: float = LOAD_TIMEOUT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=edge_env(home, EDGE_THREADS="1", **env),
    )


def test_models_lists_the_bundled_models(tmp_path):
    r = edge(tmp_path, "models")
    assert r.returncode == 0, r.stderr
    assert "smollm2:135m-q4_1" in r.stdout and "gemma3:270m-q4_k_m" in r.stdout


@pytest.mark.slow
def test_run_streams_the_answer(tmp_path):
    r = edge(tmp_path, "run", "smollm2", "What is the capital of Germany?", "--max-tokens", "24")
    assert r.returncode == 0, r.stderr
    assert "Berlin" in r.stdout
    assert "tokens" in r.stderr  # the closing line: tokens, speed, finish reason


def test_unknown_model_exits_3_naming_what_is_available(tmp_path):
    r = edge(tmp_path, "serve", "nope:1b", "--port", "0")
    assert r.returncode == 3
    assert "nope:1b" in r.stderr and "smollm2:135m-q4_1" in r.stderr and "Traceback" not in r.stderr


def test_usage_errors_exit_2(tmp_path):
    assert edge(tmp_path, "serve", "--port", "99999").returncode == 2
    assert edge(tmp_path, "serve", "--parallel", "zero").returncode == 2
    r = edge(tmp_path, "serve", "--api-key", " ")
    assert r.returncode == 2 and "API key is empty" in r.stderr


def test_a_busy_port_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        r = edge(tmp_path, "serve", "--port", str(busy.getsockname()[1]))
    assert r.returncode == 1 and "is in use" in r.stderr and "Traceback" not in r.stderr


def test_a_bad_model_file_stops_the_server_with_exit_4(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGML" + b"\0" * 1000)
    r = edge(tmp_path, "serve", str(bad), "--port", "0")
    assert r.returncode == 4, r.stderr
    assert "GGUF" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_serve_defaults_to_the_bundled_model_and_stops_cleanly_on_sigterm(tmp_path):
    srv = start_server(tmp_path)
    try:
        assert httpx.get(srv.url + "/api/ps").json()["models"] == []  # nothing preloads without a MODEL
        httpx.post(srv.url + "/api/generate", json={"model": ""}, timeout=120)  # no name: the store's default
        assert httpx.get(srv.url + "/api/ps").json()["models"][0]["model"] == "smollm2:135m-q4_1"
    finally:
        srv.proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal (so the exit status says SIGTERM)
        assert srv.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    log = srv.log_text()
    assert "serving every model in the store" in log and "Application shutdown complete" in log
    assert "Traceback" not in log


def test_settings_defaults_env_and_flags():
    s = Settings.from_env({})
    assert (s.host, s.port) == (DEFAULT_HOST, DEFAULT_PORT) == ("127.0.0.1", 11434)
    assert Settings.from_env({"EDGE_PORT": "8080", "EDGE_PARALLEL": "4"}).port == 8080
    assert Settings.from_env({"EDGE_PORT": "8080"}, port=9000).port == 9000  # a flag beats the environment
    assert not s.embed_exact and Settings.from_env({"EDGE_EMBED_EXACT": "on"}).embed_exact


def test_the_embedding_switch_reaches_the_engine(tmp_path):
    from edge.server.models import Target, open_target

    seen = {}
    target = Target("m", tmp_path / "m.gguf", 0.0, 0)
    open_target(lambda path, **kw: seen.update(kw), target, Settings.from_env({"EDGE_EMBED_EXACT": "yes"}))
    assert seen["embed_exact"] is True


def test_a_bad_environment_value_warns_and_falls_back(capsys):
    s = Settings.from_env({"EDGE_PORT": "eleven", "EDGE_PARALLEL": "0", "EDGE_EMBED_EXACT": "maybe"})
    assert s.port == DEFAULT_PORT and s.parallel is None and not s.embed_exact
    err = capsys.readouterr().err
    assert "EDGE_PORT" in err and "parallel" in err and "EDGE_EMBED_EXACT" in err


def test_a_bad_flag_is_an_error():
    with pytest.raises(BadRequestError, match="parallel"):
        Settings.from_env({}, parallel=0)


def test_a_profile_supplies_threads_and_slots_the_flags_did_not(tmp_path, smollm2_path):
    from edge.fit import fit_model
    from profiles.profile import list_profiles

    profile = list_profiles()[0]
    s = fit_model(Settings(profile=profile.name), smollm2_path).settings
    assert (s.threads, s.parallel) == (profile.runtime.threads, profile.runtime.parallel)
    assert fit_model(Settings(profile=profile.name, parallel=3), smollm2_path).settings.parallel == 3
    r = edge(tmp_path, "serve", "--profile", "no-such-board", "--port", "0")
    assert r.returncode == 3 and "no-such-board" in r.stderr


def _typer_kwargs(args: list[str]) -> dict:
    """What typer passes `edge serve` for `args` (the command's own declarations, typer's parsing)."""
    import functools

    import typer

    import edge.cli

    got: dict = {}

    @functools.wraps(edge.cli.serve)
    def capture(**kw):
        got.update(kw)

    one = typer.Typer()
    one.command()(capture)
    one(args=args, standalone_mode=False, prog_name="edge")
    return got


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["smollm2"],
        ["m.gguf", "--port", "8080", "--ctx=2048", "--no-spec", "--pin", "a", "--pin=b", "--request-timeout", "1.5"],
        ["--models", "/tmp/x", "--force", "--no-tcp", "--uds", "/tmp/s", "--allow-host", "h", "--api-key-file", "k"],
        ["--threads", "-2", "--read-timeout", "0", "--api-key", "k", "--keep-alive", "-1", "--cache-ram", "0"],
    ],
)
def test_serve_reads_a_plain_command_line_as_typer_does(args):
    """`edge serve` skips typer's per-option validators on a plain command line: same arguments."""
    import edge.cli
    from edge.cli.quickargs import quick_kwargs

    assert quick_kwargs(edge.cli.serve, args) == _typer_kwargs(args)


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--port", "08"], ["--port"], ["a", "b"], ["--port", "1", "--port", "2"], ["-x"], ["--force=1"]]
    + [["--bogus"], ["--port", "+5"], ["--models", ""], ["--", "a"], ["--parallel", "zero"], ["--ctx", "1e3"]],
)
def test_help_and_anything_unusual_on_the_serve_line_go_to_typer(args):
    import edge.cli
    from edge.cli.quickargs import quick_kwargs

    assert quick_kwargs(edge.cli.serve, args) is None


def test_serve_help_is_typers(tmp_path):
    r = edge(tmp_path, "serve", "--help")
    assert r.returncode == 0 and "Usage: edge serve [OPTIONS] [model]" in r.stdout and "--no-spec" in r.stdout
    r = edge(tmp_path, "serve", "--bogus")
    assert r.returncode == 2 and "No such option: --bogus" in r.stderr
