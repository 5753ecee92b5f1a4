"""Papercuts of issue 14: every ``--json`` output of the CLI is JSON alone on stdout (parsed whole, from a real
process, so that prints from C code or loader workers count too); ``--num_train_iter`` shortened on the command
line derives an epoch that divides it, or the error says what to pass."""

import json
import os
import subprocess
import sys

import pytest

from remop_usb.config import parse_args
from remop_usb.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXMATCH = os.path.join(REPO, "config", "demo", "fixmatch.yaml")  # epoch: 4, num_train_iter: 400


def _cli_stdout(*argv):
    proc = subprocess.run([sys.executable, "-m", "remop_usb.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, proc.stderr


def test_bench_json_is_the_only_thing_on_stdout():
    out, err = _cli_stdout("bench", "--device", "cpu", "--json", "--img_size", "32", "--batch_size", "4", "--steps",
                           "1", "--warmup", "1", "--batches", "1", "--loader_batches", "1", "--num_images", "140",
                           "--num_workers", "0")
    result = json.loads(out)  # the whole of stdout
    assert result["device"] == "cpu" and "targets" in result
    assert "[remop-usb] checked" in err  # the data check's line went to stderr


def test_split_json_is_the_only_thing_on_stdout(tiny_rafdb):
    out, _ = _cli_stdout("split", "--dataset", "rafdb", "--data_dir", tiny_rafdb, "--num_labels", "20",
                         "--lb_imb_ratio", "10", "--seed", "0", "--json")
    assert max(json.loads(out)["labeled"].values()) == 20  # num_labels: the largest class's labeled images


def test_a_shortened_run_derives_its_epoch(capsys):
    args = parse_args(["--c", FIXMATCH, "--num_train_iter", "6"])
    # 6 is not a multiple of the config's 4 epochs: 3 (the largest divisor of 6 not above 4) of 2 iterations
    assert (args.epoch, args.num_iter_per_epoch, args.num_train_iter) == (3, 2, 6)
    line = capsys.readouterr().out.strip()
    assert line == (f"[remop-usb] --num_train_iter 6 is not a multiple of epoch 4 ({FIXMATCH}:21): training 3 epochs "
                    f"of 2 iterations (--epoch sets another divisor of 6)")
    args = parse_args(["--c", FIXMATCH, "--num_train_iter", "7"])  # prime: one epoch
    assert (args.epoch, args.num_iter_per_epoch) == (1, 7)
    args = parse_args(["--c", FIXMATCH, "--num_train_iter", "8"])  # a multiple: nothing changes, nothing said
    assert (args.epoch, args.num_iter_per_epoch) == (4, 2)
    capsys.readouterr()
    assert parse_args(["--c", FIXMATCH, "--num_train_iter", "8"]) and capsys.readouterr().out == ""


def test_an_epoch_given_with_it_is_not_changed_and_the_error_says_what_to_pass():
    with pytest.raises(UserError) as err:
        parse_args(["--c", FIXMATCH, "--num_train_iter", "6", "--epoch", "4"])
    assert str(err.value) == "num_train_iter (6) must be a multiple of epoch (4): pass --epoch 3 (or another " \
                             "divisor of 6)"
