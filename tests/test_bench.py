"""The benchmark command runs and reports consistent figures (no timing is asserted: benchmarks are not tests)."""

import json

from remop_usb.cli import main


def test_bench_json(capsys):
    argv = ["bench", "--device", "cpu", "--json", "--img_size", "32", "--batch_size", "4", "--steps", "2",
            "--warmup", "1", "--batches", "2", "--loader_batches", "2", "--num_images", "140", "--num_workers", "0"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["device"] == "cpu" and out["img_size"] == 32 and out["batch_size"] == 4
    for key in ("fixmatch_step_s", "remop_fixmatch_step_s", "plain_fixmatch_step_s", "peak_memory_mb"):
        assert out[key] > 0
    assert out["remop_over_fixmatch"] == out["remop_fixmatch_step_s"] / out["fixmatch_step_s"]
    assert out["plugin_over_plain"] == out["fixmatch_step_s"] / out["plain_fixmatch_step_s"]
    assert out["loader_images_per_s"]["total"] > 0
