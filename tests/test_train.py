"""Few-iteration train.py runs on generated data, through USB's real training loop, on CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import train_argv
from remop_usb.launch import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _results(save_dir, name):
    with open(os.path.join(save_dir, name, "results.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("config,algorithm,imb,heads", [
    ("fixmatch", "fixmatch", None, {"linear"}),
    ("remop_fixmatch", "fixmatch", "remop", {"mixture", "linear"}),
    ("supervised", "supervised", None, {"linear"}),
    ("remop_supervised", "supervised", "remop", {"mixture", "linear"}),
])
def test_few_iterations_write_results(tiny_rafdb, tmp_path, config, algorithm, imb, heads):
    name = config
    rc = main(train_argv(tiny_rafdb, tmp_path, config=f"config/demo/{config}.yaml", save_name=name,
                         use_tensorboard=True))
    assert rc == 0
    tb_dir = os.path.join(tmp_path, name, "tensorboard")
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tb_dir))  # USB's TensorBoard output
    res = _results(tmp_path, name)
    assert res["algorithm"] == algorithm and res["imb_algorithm"] == imb
    assert res["dataset"] == "rafdb" and res["seed"] == 0
    assert len(res["split_sha256"]) == 64
    for which in ("best", "last"):
        assert set(res[which]["heads"]) == heads
        for report in res[which]["heads"].values():
            cf = report["confusion_matrix"]
            assert len(cf) == 7 and sum(map(sum, cf)) == 140  # every test image counted once
            assert 0.0 <= report["overall_acc"] <= 100.0
            assert set(report["per_class_acc"]) == {"neutral", "happy", "sad", "surprise", "fear", "disgust",
                                                    "anger"}
    # the split manifest sits beside results.json and carries the same hash
    with open(os.path.join(tmp_path, name, "split.json")) as f:
        assert json.load(f)["sha256"] == res["split_sha256"]


def test_usb_imbalanced_algorithms_train_on_cpu(tiny_rafdb, tmp_path):
    for imb in ("abc", "adsh"):
        assert main(train_argv(tiny_rafdb, tmp_path, config="config/demo/fixmatch.yaml", imb_algorithm=imb,
                               save_name=imb,
                               num_train_iter=4, epoch=2, num_eval_iter=2)) == 0
        res = _results(tmp_path, imb)
        assert res["imb_algorithm"] == imb
        assert list(res["last"]["heads"]) == (["aux", "linear"] if imb == "abc" else ["linear"])


def test_save_and_resume(tiny_rafdb, tmp_path):
    argv = train_argv(tiny_rafdb, tmp_path, save_name="run", num_train_iter=4, num_eval_iter=2)
    assert main(argv) == 0
    first = torch.load(os.path.join(tmp_path, "run", "latest_model.pth"), weights_only=False)
    # USB resumes at the next epoch, so the continued run has a second epoch to train
    argv = train_argv(tiny_rafdb, tmp_path, save_name="run", num_train_iter=8, epoch=2, num_eval_iter=2,
                      resume=True)
    assert main(argv) == 0
    second = torch.load(os.path.join(tmp_path, "run", "latest_model.pth"), weights_only=False)
    assert (first["it"], second["it"]) == (4, 8)  # completed iterations, exactly
    log = open(os.path.join(tmp_path, "run", "log.txt")).read()
    resumed = log[log.index("Model loaded"):]
    assert "INFO] 5 iteration" in resumed and "INFO] 1 iteration" not in resumed  # continued at step 5
    w1 = first["model"]["module.centers"]
    w2 = second["model"]["module.centers"]
    assert not torch.equal(w1, w2)


def test_train_py_bad_input_is_one_line_without_traceback(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("algorithm: fixmatch\nnum_lables: 10\n")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--c", str(cfg)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {cfg}:2: unknown key 'num_lables'; did you mean 'num_labels'? "
        f"(python train.py --c {cfg} --help lists the valid keys)"]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_resuming_with_a_different_split_stops(tiny_rafdb, tmp_path, capsys):
    assert main(train_argv(tiny_rafdb, tmp_path, save_name="run", num_train_iter=2, num_eval_iter=2)) == 0
    capsys.readouterr()
    argv = train_argv(tiny_rafdb, tmp_path, save_name="run", num_train_iter=4, epoch=2, num_eval_iter=2,
                      resume=True, seed=1)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resume: this run's split" in err[0] and "differs from the one it started with" in err[0]


def test_checkpoints_record_completed_iterations_and_their_epoch(tiny_rafdb, tmp_path):
    from remop_usb.config import parse_args
    from remop_usb.launch import build_algorithm, resolve_device

    args = parse_args(train_argv(tiny_rafdb, tmp_path, save_name="ckpt", num_train_iter=8, epoch=2))
    resolve_device(args)
    alg = build_algorithm(args)
    assert alg.num_iter_per_epoch == 4
    alg.it, alg.epoch = 5, 1  # saved from inside step index 5: 6 steps done, the second epoch (index 1) unfinished
    d = alg.get_save_dict()
    assert (d["it"], d["epoch"]) == (6, 1)  # USB would store epoch 2 and skip the rest of epoch 1 on resume
    alg.it, alg.epoch = 8, 1  # after the loop: it already counts all 8 steps
    d = alg.get_save_dict()
    assert (d["it"], d["epoch"]) == (8, 2)  # USB would store 9


def test_results_json_is_the_last_file_a_run_writes(tiny_rafdb, tmp_path, monkeypatch):
    from remop_usb import figures, tracking

    results_path = os.path.join(tmp_path, "run", "results.json")
    seen = []
    monkeypatch.setattr(figures, "write_run_plots", lambda *a: seen.append(("plots", os.path.exists(results_path)))
                        or {})
    monkeypatch.setattr(tracking, "finish", lambda *a: seen.append(("wandb", os.path.exists(results_path))))
    argv = train_argv(tiny_rafdb, tmp_path, save_name="run", num_train_iter=2, num_eval_iter=2, plots=True)
    assert main(argv) == 0
    assert seen == [("plots", False), ("wandb", False)]  # a run stopped while plotting is not taken as finished
    assert _results(tmp_path, "run")["last"]["it"] == 2

