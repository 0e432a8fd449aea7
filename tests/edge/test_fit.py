"""`edge serve` plans before it binds: profile defaults, automatic context, refusal of what does not fit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge.config import Settings
from edge.errors import DoesNotFitError
from edge.fit import fit_model


def test_profile_fills_threads_slots_and_the_largest_context(smollm2_path):
    fit = fit_model(Settings(profile="rpi5-4gb"), smollm2_path)
    s = fit.settings
    assert (s.threads, s.parallel) == (4, 1)  # the Pi 5's four A76 cores, one slot
    assert s.ctx == 4096  # min(model's own 8192, the profile's 4096): it fits, so the cap wins
    assert fit.profile == "rpi5-4gb" and "rpi5-4gb" in fit.reasons[0]


def test_flags_win_over_the_profile(smollm2_path):
    s = fit_model(Settings(profile="rpi5-4gb", threads=1, parallel=2, ctx=1024), smollm2_path).settings
    assert (s.threads, s.parallel, s.ctx) == (1, 2, 1024)


def test_a_context_that_does_not_fit_is_refused_with_numbers_and_a_way_out(smollm2_path):
    with pytest.raises(DoesNotFitError) as err:
        fit_model(Settings(profile="rpi5-4gb", ctx=131072), smollm2_path)
    msg = err.value.message
    assert "needs 3.09 GiB" in msg and "runtime 0.05 GiB" in msg and "budget 2.73 GiB on rpi5-4gb" in msg
    assert "--ctx " in msg and "--force" in msg
    forced = fit_model(Settings(profile="rpi5-4gb", ctx=131072), smollm2_path, force=True)
    assert forced.settings.ctx == 131072


def test_serve_refuses_and_exits_5_before_binding(smollm2_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "serve",
            str(smollm2_path),
            "--profile",
            "rpi5-4gb",
            "--ctx",
            "131072",
            "--port",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 5, proc.stderr
    assert "error: SmolLM2-135M-Instruct.Q4_1.gguf needs" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "serving" not in proc.stderr  # refused before any socket was bound (port 1 would need root anyway)


def test_the_prompt_cache_is_counted_in_the_models_share(smollm2_path):
    from edge.fit import model_need, server_budget

    on = Settings(profile="rpi5-4gb")
    off = Settings(profile="rpi5-4gb", cache_ram=0)
    budget = server_budget(on)
    assert on.cache_ram == 256
    assert model_need(on, budget, smollm2_path).bytes - model_need(off, budget, smollm2_path).bytes == 256 << 20
    assert "prompt cache up to 256 MiB (counted in the model's share)" in fit_model(on, smollm2_path).reasons
    assert "prompt cache off" in fit_model(off, smollm2_path).reasons
    assert Settings.from_env({"EDGE_CACHE_RAM": "64"}).cache_ram == 64
