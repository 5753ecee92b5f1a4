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


def test_every_subcommand_resolves_to_a_main_and_has_help(capsys):
    from remop_usb.cli import COMMANDS, _command

    for name in COMMANDS:
        assert callable(_command(name))
        if name in ("train", "demo-data"):
            continue  # train's --help needs the config machinery; demo-data is exercised above
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage:" in capsys.readouterr().out


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

