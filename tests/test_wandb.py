"""W&B offline: a few training iterations with use_wandb: True, then the offline run's own records are read back.

An offline run is one file, ``wandb/offline-run-*/run-<id>.wandb``: W&B's record log (LevelDB log framing: 7-byte
header ":W&B" + magic + version, 32 KiB blocks of records [crc32c, length, type] holding ``wandb.proto.Record``
messages). Nothing is sent anywhere.
"""

import glob
import json
import os
import struct
import subprocess
import sys

import pytest

from conftest import train_argv
from remop_usb.launch import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    records, pos, chunk = [], 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def _items(updates):
    return {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in updates}


def offline_run(save_path):
    runs = glob.glob(os.path.join(save_path, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(runs) == 1, runs
    run, config, summary, history = None, {}, {}, []
    for r in read_records(runs[0]):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
            config.update(_items(r.run.config.update))
        elif kind == "config":
            config.update(_items(r.config.update))
        elif kind == "summary":
            summary.update(_items(r.summary.update))
        elif kind == "history":
            history.append(_items(r.history.item))
    return run, config, summary, history


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_offline_run_records_config_group_tags_per_class_and_diagnostics(offline, tiny_rafdb, tmp_path):
    assert main(train_argv(tiny_rafdb, tmp_path, save_name="wb", use_wandb=True, wandb_project="remop-test",
                           wandb_tags="demo,smoke", diagnostics=True, num_train_iter=4, num_eval_iter=2)) == 0
    save_path = os.path.join(tmp_path, "wb")
    results = json.load(open(os.path.join(save_path, "results.json")))
    run, config, summary, history = offline_run(save_path)

    assert run.project == "remop-test"
    assert run.run_group == "rafdb-N20-g10"  # the setting: dataset-N1-gamma
    assert list(run.tags) == ["fixmatch+remop", "demo", "smoke"]  # the method first
    assert run.display_name == "fixmatch+remop-rafdb-N20-g10-seed0"
    assert config["split_sha256"] == results["split_sha256"] and len(config["split_sha256"]) == 64
    assert (config["method"], config["setting"], config["num_labels"], config["lr"]) == \
        ("fixmatch+remop", "rafdb-N20-g10", 20, 0.0001)

    # the summary is the leaderboard row: best and last, primary head (ReMoP: mixture) and every head
    for which in ("best", "last"):
        mixture = results[which]["heads"]["mixture"]
        assert summary[f"{which}/acc"] == pytest.approx(mixture["overall_acc"])
        assert summary[f"{which}/mean_class_acc"] == pytest.approx(mixture["mean_class_acc"])
        linear = results[which]["heads"]["linear"]
        assert summary[f"{which}/linear/acc"] == pytest.approx(linear["overall_acc"])
        for name, acc in linear["per_class_acc"].items():
            if acc is not None:
                assert summary[f"{which}/linear/per_class/{name}"] == pytest.approx(acc)
    assert summary["best/it"] == results["best"]["it"] and summary["split_sha256"] == results["split_sha256"]
    # the confusion matrix (wandb.plot.confusion_matrix) is a table file of the run: the same counts as results.json
    run_dir = os.path.dirname(glob.glob(os.path.join(save_path, "wandb", "offline-run-*", "run-*.wandb"))[0])
    table = json.load(open(os.path.join(run_dir, "files", summary["confusion/last_table/path"])))
    names = results["class_names"]
    counts = {(a, p): n for a, p, n in table["data"]}
    cf = results["last"]["heads"]["mixture"]["confusion_matrix"]
    assert all(counts.get((names[i], names[j]), 0) == cf[i][j] for i in range(7) for j in range(7))
    assert summary["per_class_accuracy/_type"] == "table-file"

    # history: USB's scalars and the diagnostics at the diagnostics steps (num_eval_iter = 2: steps 2 and 4)
    steps = {h["_step"]: h for h in history}
    diag_steps = sorted(s for s, h in steps.items() if "diag/mixture/macro_f1" in h)
    assert diag_steps == [2, 4]
    records = [json.loads(line) for line in open(os.path.join(save_path, "diagnostics.jsonl"))]
    assert [r["it"] for r in records] == diag_steps
    last = steps[4]
    assert last["diag/linear/macro_f1"] == pytest.approx(records[-1]["pseudo_labels"]["linear"]["macro_f1"])
    assert last["diag/nc_etf_cosine"] == pytest.approx(-1 / 6)
    assert "eval/top-1-acc" in steps[2] and "train/sup_loss" in steps[1]


def test_a_resumed_run_continues_its_wandb_run(offline, tiny_rafdb, tmp_path):
    base = dict(save_name="wb", use_wandb=True, plots=False, diagnostics=False, num_train_iter=2, num_eval_iter=2)
    assert main(train_argv(tiny_rafdb, tmp_path, **base)) == 0
    first = json.load(open(os.path.join(tmp_path, "wb", "wandb_run.json")))["id"]
    assert main(train_argv(tiny_rafdb, tmp_path, **dict(base, num_train_iter=4, epoch=2, resume=True))) == 0
    assert json.load(open(os.path.join(tmp_path, "wb", "wandb_run.json")))["id"] == first
    ids = {os.path.basename(p).split("-")[-1] for p in glob.glob(os.path.join(tmp_path, "wb", "wandb",
                                                                               "offline-run-*"))}
    assert ids == {first}


def test_online_without_an_account_is_one_line(tiny_rafdb, tmp_path):
    """A fresh process (W&B's settings are per process): online mode, no API key, no stored login."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="online", HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
               OMP_NUM_THREADS="1")
    argv = train_argv(tiny_rafdb, tmp_path, save_name="wb", use_wandb=True, plots=False, diagnostics=False,
                      num_train_iter=1, num_eval_iter=1)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py")] + argv, env=env, cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No API key configured" in errors[0] and "WANDB_MODE=offline" in errors[0]
    assert "Traceback" not in proc.stderr
