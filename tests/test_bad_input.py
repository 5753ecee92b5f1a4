"""Bad input through the real entry point: one line on stderr, exit status 2, no traceback, no results.json."""

import os
import shutil

import pytest

from conftest import train_argv
from remop_usb.launch import main


def run_expecting_error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def no_results(save_dir):
    return not any("results.json" in files for _, _, files in os.walk(save_dir))


def test_missing_data_dir_names_the_expected_layout(tmp_path, capsys):
    argv = train_argv(str(tmp_path / "nowhere"), tmp_path / "runs", config="config/demo/fixmatch.yaml",
                      demo_data=False)
    line = run_expecting_error(argv, capsys)
    assert "nowhere" in line and "basic/EmoLabel/list_patition_label.txt" in line
    assert no_results(tmp_path)


def test_missing_label_file(tmp_path, capsys):
    (tmp_path / "data" / "basic" / "Image" / "aligned").mkdir(parents=True)
    argv = train_argv(str(tmp_path / "data"), tmp_path / "runs", config="config/demo/fixmatch.yaml",
                      demo_data=False)
    line = run_expecting_error(argv, capsys)
    assert "list_patition_label.txt" in line


def test_malformed_label_line_names_file_and_line(tiny_rafdb, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_rafdb, data)
    label_file = data / "basic" / "EmoLabel" / "list_patition_label.txt"
    lines = label_file.read_text().splitlines()
    lines[2] = lines[2].split()[0] + " nine"
    label_file.write_text("\n".join(lines) + "\n")
    line = run_expecting_error(train_argv(str(data), tmp_path / "runs", config="config/demo/fixmatch.yaml"), capsys)
    assert "list_patition_label.txt:3:" in line and "nine" in line


def test_num_labels_larger_than_the_head_class_reports_class_sizes(tiny_rafdb, tmp_path, capsys):
    argv = train_argv(tiny_rafdb, tmp_path / "runs", config="config/demo/fixmatch.yaml", num_labels=500)
    line = run_expecting_error(argv, capsys)
    # the generated set has 280 * 4772 / 12271 = 108.9 -> 109 happy training images
    assert "500" in line and "'happy'" in line and "class sizes: happy 109" in line
    assert no_results(tmp_path)


def test_missing_checkpoint_names_the_path(tiny_rafdb, tmp_path, capsys):
    missing = tmp_path / "weights" / "resnet18_msceleb.pth"
    argv = train_argv(tiny_rafdb, tmp_path / "runs", config="config/demo/fixmatch.yaml", use_pretrain=True,
                      pretrain_path=str(missing))
    line = run_expecting_error(argv, capsys)
    assert str(missing) in line
    assert no_results(tmp_path)


def test_wrong_num_classes(tiny_rafdb, tmp_path, capsys):
    argv = train_argv(tiny_rafdb, tmp_path / "runs", config="config/demo/fixmatch.yaml", num_classes=8)
    line = run_expecting_error(argv, capsys)
    assert "has 7 classes" in line and "not num_classes=8" in line


@pytest.mark.parametrize("flag,message", [
    (["--num_lables", "5"], "unknown flag --num_lables; did you mean --num_labels? (python train.py --help lists "
                            "the valid flags)"),
    (["--num_lables=5"], "unknown flag --num_lables; did you mean --num_labels?"),
    (["--lr", "abc"], "flag --lr expects a finite number, got 'abc'"),
    (["--num_labels", "2.5"], "flag --num_labels expects an integer, got '2.5'"),
    (["--use_cat", "maybe"], "flag --use_cat expects true or false, got 'maybe'"),
    (["--optim", "Adagrad"], "flag --optim must be one of SGD, AdamW, Adam; got 'Adagrad'"),
    (["--remop_beta", "0.3"], "flag --remop_beta is an option of imb_algorithm 'remop', which this run does not use"),
    (["stray"], "unexpected argument 'stray' (flags take the form --key value)"),
])
def test_a_bad_command_line_flag_is_one_line_naming_it(tiny_rafdb, tmp_path, capsys, flag, message):
    argv = train_argv(tiny_rafdb, tmp_path / "runs", config="config/demo/fixmatch.yaml") + flag
    line = run_expecting_error(argv, capsys)
    assert line.startswith(f"error: command line: {message}"), line
    assert "usage:" not in line
    assert not (tmp_path / "runs").exists()  # refused before anything was written
