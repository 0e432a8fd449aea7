"""`edge bench` as a user runs it: a real model measured, the calibration `edge-quantize plan` then reads,
and the refusal while a server is serving."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.live import edge_cli, edge_env, free_port, start_server

PROFILE = "generic"
QUICK = ("-c", "512", "--prompt-tokens", "32", "--tokens", "16", "--repeats", "1", "--threads", "1")


def plan_json(home, model) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "quantize.cli", "plan", str(model), "--profile", PROFILE, "--json"],
        capture_output=True,
        text=True,
        env=edge_env(home),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_bench_records_a_calibration_that_plan_reads(tmp_path, smollm2_path):
    before = plan_json(tmp_path, smollm2_path)
    assert before["speed"] == {"upper_bound": True, "calibration": []}
    assert {e["speed_basis"] for e in before["estimates"]} == {"upper_bound"}

    r = edge_cli(tmp_path, "bench", "smollm2", *QUICK, "--profile", PROFILE, "--port", str(free_port()), "--json")
    figures = json.loads(r.stdout)
    assert figures["type"] == "Q4_1" and figures["tg_median"] > 0 and figures["pp_median"] > 0
    assert "tg 1/1" in r.stderr and "calibration recorded" in r.stderr  # progress while measuring

    after = plan_json(tmp_path, smollm2_path)
    assert after["speed"]["upper_bound"] is False
    [used] = after["speed"]["calibration"]
    assert used["type"] == "Q4_1" and used["tg_tps"] == round(figures["tg_median"], 2)
    assert {e["speed_basis"] for e in after["estimates"]} == {"estimated"}
    speeds = {e["type"]: e["tokens_per_s"] for e in after["estimates"]}
    assert speeds["Q8_0"] > speeds["F16"]  # fewer bytes per token, same kernel cost
    assert speeds != {e["type"]: e["tokens_per_s"] for e in before["estimates"]}

    from edge.config import Settings
    from edge.fit import fit_model

    reasons = fit_model(Settings(profile=PROFILE, home=tmp_path, threads=1), smollm2_path).reasons
    assert any(r.startswith("generation ") and "(measured" in r for r in reasons), reasons


def test_bench_refuses_while_a_server_is_serving(tmp_path):
    server = start_server(tmp_path / "srv", "--ctx", "512")
    try:
        r = edge_cli(tmp_path, "bench", "smollm2", *QUICK, "--port", str(server.port), check=False)
    finally:
        server.stop()
    assert r.returncode == 1, r.stderr
    assert f"listening on 127.0.0.1:{server.port}" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "calibration").exists()


def test_a_corrupt_calibration_is_ignored_with_a_warning(tmp_path, smollm2_path):
    from profiles.calibration import calibration_path

    path = calibration_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"format": "edge-calibration", "version": 1, "records": [{"tg_tps": ')
    r = subprocess.run(
        [sys.executable, "-m", "quantize.cli", "plan", str(smollm2_path), "--profile", PROFILE, "--json"],
        capture_output=True,
        text=True,
        env=edge_env(tmp_path),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["speed"]["upper_bound"] is True
    assert f"calibration {path} ignored" in r.stderr
