"""The remop-usb command."""

import os

from remop_usb.cli import main


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
