"""profiles.calibration (the file `edge bench` writes) and the planner's SpeedModel fitted to it."""

from __future__ import annotations

import json
import logging

import pytest

from profiles import calibration
from profiles.plan.planner import LAYER_S, SpeedModel, bytes_by_type, cost_bytes, estimate
from profiles.plan.shape import read_model_shape
from profiles.profile import get_profile


def record(shape, ftype: str, tg_tps: float, **kw) -> calibration.Record:
    fields = dict(
        model=calibration.model_key(shape),
        profile="generic",
        type=ftype,
        threads=2,
        n_ctx=2048,
        parallel=1,
        tg_tps=tg_tps,
        pp_tps=1000.0,
        bytes_by_type=bytes_by_type(shape, ftype),
        kv_read_bytes=0,
        n_layer=shape.n_layer,
    )
    return calibration.Record(**{**fields, **kw})


def test_save_then_load_keeps_one_record_per_model_and_type(tmp_path, smollm2_path):
    shape = read_model_shape(smollm2_path)
    path = tmp_path / "dev.json"
    calibration.save(record(shape, "Q8_0", 100.0), path)
    calibration.save(record(shape, "F16", 60.0), path)
    calibration.save(record(shape, "Q8_0", 110.0), path)  # measured again: replaces the first
    assert sorted((r.type, r.tg_tps) for r in calibration.load(path)) == [("F16", 60.0), ("Q8_0", 110.0)]


def test_a_damaged_record_is_skipped_with_a_warning(tmp_path, smollm2_path, caplog):
    shape = read_model_shape(smollm2_path)
    path = tmp_path / "dev.json"
    calibration.save(record(shape, "Q8_0", 100.0), path)
    data = json.loads(path.read_text())
    data["records"].append({**data["records"][0], "tg_tps": "fast"})
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="profiles.calibration"):
        assert [r.tg_tps for r in calibration.load(path)] == [100.0]
    assert "record 1 ignored" in caplog.text


@pytest.mark.parametrize("text", ["", "[]", '{"format": "other"}', "\x00\xff"])
def test_a_file_of_another_shape_is_ignored(tmp_path, text, caplog):
    path = tmp_path / "dev.json"
    path.write_text(text, errors="surrogateescape")
    assert calibration.load(path) == []
    assert "ignored" in caplog.text


def test_two_types_of_one_model_fit_bandwidth_and_layer_time(smollm2_path):
    shape = read_model_shape(smollm2_path)
    bw, layer_s = 30e9, 60e-6  # a device: seconds per token = kernel-weighted bytes / bw + layers x layer_s

    def true_tps(ftype: str) -> float:
        return 1 / (cost_bytes(bytes_by_type(shape, ftype)) / bw + shape.n_layer * layer_s)

    model = SpeedModel((record(shape, "F16", true_tps("F16")), record(shape, "Q4_0", true_tps("Q4_0"))))
    fitted_bw, fitted_layer, used = model.fit(shape)
    assert fitted_bw == pytest.approx(bw, rel=1e-6) and fitted_layer == pytest.approx(layer_s, rel=1e-6)
    est = estimate(shape, "Q8_0", 2048, get_profile("generic"), speed_model=model)
    assert est.speed_basis == "estimated"
    # the KV cache read at 512 tokens is the only difference from the device's own formula
    assert est.tokens_per_s == pytest.approx(true_tps("Q8_0"), rel=0.1)
    assert estimate(shape, "F16", 2048, get_profile("generic"), speed_model=model).speed_basis == "measured"


def test_one_record_fits_the_bandwidth_with_the_default_layer_time(smollm2_path):
    shape = read_model_shape(smollm2_path)
    model = SpeedModel((record(shape, "Q8_0", 150.0),))
    bw, layer_s, _ = model.fit(shape)
    assert layer_s == LAYER_S
    assert bw == pytest.approx(cost_bytes(bytes_by_type(shape, "Q8_0")) / (1 / 150.0 - shape.n_layer * LAYER_S))
    assert SpeedModel.for_profile([record(shape, "Q8_0", 150.0)], "rpi5-4gb") is None  # another profile's
