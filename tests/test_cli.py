"""The remop-usb command."""

import os

import pytest

from remop_usb.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_data_writes_the_rafdb_layout(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo-data", "--out", str(out), "--num_train", "70", "--num_test", "35", "--size", "32"]) == 0
    label_file = out / "basic" / "EmoLabel" / "list_patition_label.txt"
    lines = label_file.read_text().split("\n")
    lines = [line for line in lines if line]
    assert len(lines) == 105
    for line in lines:
        name, code = line.split()
        stem = name[:-4]
        assert os.path.isfile(out / "basic" / "Image" / "aligned" / f"{stem}_aligned.jpg")
        assert 1 <= int(code) <= 7
    assert "wrote a synthetic RAF-DB" in capsys.readouterr().out


def test_demo_data_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "x").write_text("mine")
    assert main(["demo-data", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is not an empty folder" in err[0]


def test_unknown_subcommand(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown subcommand 'frobnicate'" in capsys.readouterr().err


#: the start of each subcommand's --help usage (train's comes from train.py's own parser)
USAGE_STARTS = {
    "train": "usage: train.py [-h] [--save_dir SAVE_DIR] [-sn SAVE_NAME]",
    "demo-data": "usage: remop-usb demo-data [-h] --out OUT [--dataset DATASET]",
    "split": "usage: remop-usb split [-h] --dataset DATASET --data_dir DATA_DIR",
    "align": "usage: remop-usb align [-h] --src SRC --dst DST",
    "sweep": "usage: remop-usb sweep [-h] [--grid GRID] [--out OUT] [--status DIR]",
    "leaderboard": "usage: remop-usb leaderboard [-h] [--checkpoint {best,last}]",
    "plots": "usage: remop-usb plots [-h] [--checkpoint {last,best}] run_dir",
    "bench": "usage: remop-usb bench [-h] [--device {cpu,cuda}]",
    "inpl-cutoff": "usage: remop-usb inpl-cutoff [-h] --c C --load_path LOAD_PATH",
    "pretrain": "usage: remop-usb pretrain [-h] [--out OUT] [--cache_dir CACHE_DIR]",
}


def test_every_subcommand_has_help(capsys):
    from remop_usb.cli import COMMANDS

    assert set(COMMANDS) == set(USAGE_STARTS)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0, name
        usage = " ".join(capsys.readouterr().out.split())  # argparse wraps at the terminal's width
        assert usage.startswith(USAGE_STARTS[name]), (name, usage[:200])


@pytest.mark.slow  # two fresh interpreters importing torch and semilearn (about 30 s on 2 cores)
@pytest.mark.parametrize("argv", [["--help"], ["sweep", "--grid", "config/grids/demo.yaml", "--out", "{out}",
                                                "--dry_run"]])
def test_a_closed_stdout_ends_quietly(tmp_path, argv):
    """``remop-usb ... | head -3``: the reader is gone before anything is written (the read end of the pipe is
    closed first), so every write fails: no traceback, status 141 (128 + SIGPIPE)."""
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "remop_usb.cli"] + [a.format(out=tmp_path / "o") for a in argv],
                              cwd=REPO, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 141

