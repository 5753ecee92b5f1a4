"""remop-usb align on the real faces scikit-image ships: MTCNN crops, the fallback, the report, resuming."""

import json
import os

import numpy as np
import pytest
import skimage.data
from PIL import Image

from datasets_fer import align
from remop_usb.cli import main

# Measured by hand on skimage.data.astronaut() (512 x 512, zoomed 4x with a 10-px grid): eye centres (202, 101)
# and (246, 103), nose tip (224, 125), mouth centre (225, 147); the face (eyebrows to chin, cheek to cheek)
# spans x 182..260, y 88..178.
ASTRONAUT_FACE = (182, 88, 260, 178)
ASTRONAUT_EYES = ((202, 101), (246, 103))
ASTRONAUT_NOSE = (224, 125)
ASTRONAUT_MOUTH = (225, 147)


def iou(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def run(capsys, src, dst, *extra):
    argv = ["align", "--src", str(src), "--dst", str(dst), "--no_progress", *extra]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return out[-1]


def report(dst):
    return json.loads((dst / align.REPORT_NAME).read_text())


@pytest.fixture(scope="module")
def astronaut():
    return Image.fromarray(skimage.data.astronaut())


def test_astronaut_box_is_the_face(astronaut):
    box = align.detect_faces(align.make_detector("cpu"), [astronaut])[0]
    assert iou(box, ASTRONAUT_FACE) > 0.5
    for x, y in ASTRONAUT_EYES + (ASTRONAUT_NOSE, ASTRONAUT_MOUTH):
        assert box[0] < x < box[2] and box[1] < y < box[3]


def test_astronaut_crop_with_margin(astronaut, tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "nasa").mkdir(parents=True)
    astronaut.save(src / "nasa" / "astronaut.png")
    summary = run(capsys, src, dst, "--size", "112", "--margin", "12")
    assert summary.startswith("align: 1 processed (1 with a face, 0 without")
    out = Image.open(dst / "nasa" / "astronaut.png")
    assert out.size == (112, 112) and out.mode == "RGB"

    # The documented crop: MTCNN's box grown by 12 of the 112 output pixels, i.e. 12 * side / (112 - 12) source
    # pixels per axis, half on each side, truncated to whole pixels.
    x1, y1, x2, y2 = align.detect_faces(align.make_detector("cpu"), [astronaut])[0]
    gx, gy = 12 * (x2 - x1) / 100, 12 * (y2 - y1) / 100
    region = (int(x1 - gx / 2), int(y1 - gy / 2), int(x2 + gx / 2), int(y2 + gy / 2))
    expected = np.asarray(astronaut.crop(region).resize((112, 112), Image.BILINEAR), dtype=float)
    assert np.abs(np.asarray(out, dtype=float) - expected).max() <= 1

    # Where the hand-measured landmarks land in the crop: the face is centred, upright, not mirrored.
    def in_crop(point):
        return ((point[0] - region[0]) / (region[2] - region[0]), (point[1] - region[1]) / (region[3] - region[1]))

    (lx, ly), (rx, ry) = map(in_crop, ASTRONAUT_EYES)
    nx, ny = in_crop(ASTRONAUT_NOSE)
    mx, my = in_crop(ASTRONAUT_MOUTH)
    assert 0.15 < lx < 0.45 < 0.55 < rx < 0.85
    assert 0.2 < ly < 0.5 and 0.2 < ry < 0.5
    assert 0.4 < nx < 0.6 and ly < ny < my < 0.9


def test_lfw_faces_detected_non_faces_fall_back(tmp_path, capsys):
    """skimage's lfw_subset: 100 real 25 x 25 faces, then 100 non-faces; upscaled to 64 px for MTCNN."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    pictures = skimage.data.lfw_subset()
    for kind, part in (("faces", pictures[:100]), ("other", pictures[100:])):
        (src / kind).mkdir(parents=True)
        for i, a in enumerate(part):
            grey = Image.fromarray(np.round(a * 255).astype(np.uint8))
            grey.resize((64, 64), Image.BICUBIC).save(src / kind / f"{i:03d}.png")
    summary = run(capsys, src, dst, "--size", "48", "--batch_size", "40")
    no_face = {entry["image"] for entry in report(dst)["no_face"]}
    missed = sum(os.path.join("faces", f"{i:03d}.png") in no_face for i in range(100))
    rejected = sum(os.path.join("other", f"{i:03d}.png") in no_face for i in range(100))
    assert missed <= 10 and rejected >= 90
    assert summary.startswith(f"align: 200 processed ({200 - len(no_face)} with a face, {len(no_face)} without")
    for kind in ("faces", "other"):
        assert sorted(os.listdir(dst / kind)) == [f"{i:03d}.png" for i in range(100)]
    assert Image.open(dst / "faces" / "000.png").size == (48, 48)


def test_no_face_fallback_resume_and_corrupt_files(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    coins = skimage.data.coins()  # 303 x 384 grey, no face
    Image.fromarray(coins).save(src / "sub" / "coins.png")
    Image.new("RGB", (10, 10), (90, 90, 90)).save(src / "tiny.bmp")
    (src / "notes.jpg").write_bytes(b"this is not a JPEG")
    buf = (tmp_path / "whole.jpg")
    Image.fromarray(skimage.data.astronaut()).save(buf, quality=90)
    (src / "truncated.jpg").write_bytes(buf.read_bytes()[:5000])
    (src / "readme.txt").write_text("not an image name")

    summary = run(capsys, src, dst, "--size", "64")
    assert summary.startswith("align: 2 processed (0 with a face, 2 without: center_crop), 0 skipped")
    assert ", 2 unreadable," in summary
    rep = report(dst)
    assert rep["size"] == 64 and rep["margin"] == 0
    assert rep["no_face"] == [
        {"image": os.path.join("sub", "coins.png"), "reason": "no face detected", "fallback": "center_crop"},
        {"image": "tiny.bmp", "reason": "smaller than 20 px", "fallback": "center_crop"},
    ]
    assert [e["image"] for e in rep["unreadable"]] == ["notes.jpg", "truncated.jpg"]
    assert sorted(os.listdir(dst)) == [align.REPORT_NAME, "sub", "tiny.bmp"]

    # The centre crop of the 384-wide, 303-high coins: columns 40..343 (the middle 303), resized to 64.
    out = np.asarray(Image.open(dst / "sub" / "coins.png"), dtype=float)
    assert out.shape == (64, 64, 3)
    centre = Image.fromarray(coins[:, 40:343]).resize((64, 64), Image.BILINEAR)
    assert np.abs(out[..., 0] - np.asarray(centre, dtype=float)).mean() < 2
    assert np.all(np.asarray(Image.open(dst / "tiny.bmp")) == 90)

    # Second run: everything readable is skipped, files are untouched, the report keeps its no-face entries.
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (dst / "sub" / "coins.png", dst / "tiny.bmp")}
    summary = run(capsys, src, dst, "--size", "64")
    assert summary.startswith("align: 0 processed (0 with a face, 0 without: center_crop), 2 skipped")
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before
    assert report(dst)["no_face"] == rep["no_face"] and report(dst)["unreadable"] == rep["unreadable"]

    # A run killed mid-way: one output missing, a stale temporary file left behind.
    (dst / "tiny.bmp").unlink()
    (dst / "sub" / ".align-tmp-abc.png").write_bytes(b"half")
    summary = run(capsys, src, dst, "--size", "64")
    assert summary.startswith("align: 1 processed (0 with a face, 1 without: center_crop), 1 skipped")
    assert sorted(os.listdir(dst / "sub")) == ["coins.png"]
    assert report(dst)["no_face"] == rep["no_face"]


def test_dst_inside_src_is_not_an_input_and_progress_is_shown(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (12, 16), (10, 20, 30)).save(src / "small.png")
    argv = ["align", "--src", str(src), "--dst", str(src / "aligned"), "--size", "24"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "align: 100%" in captured.err and "1/1" in captured.err  # the tqdm bar, on stderr
    assert captured.out.startswith("align: 1 processed (0 with a face, 1 without")
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("align: 0 processed (0 with a face, 0 without: center_crop), 1 skipped")
    assert sorted(os.listdir(src / "aligned")) == [align.REPORT_NAME, "small.png"]


def test_save_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out" / "face.png"

    def crash(self, fp, *args, **kwargs):
        with open(fp, "wb") as fh:  # PIL is handed the temporary path
            fh.write(b"\x89PNG half an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        align.save_atomic(Image.new("RGB", (8, 8)), str(target))
    assert os.listdir(tmp_path / "out") == []


def one_line_error(capsys, argv):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err
    return lines[0]


def test_bad_input(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    msg = one_line_error(capsys, ["align", "--src", str(src), "--dst", str(tmp_path / "d")])
    assert "no images found" in msg and str(src) in msg
    msg = one_line_error(capsys, ["align", "--src", str(tmp_path / "nope"), "--dst", str(tmp_path / "d")])
    assert "does not exist" in msg
    Image.new("RGB", (30, 30)).save(src / "a.png")
    msg = one_line_error(capsys, ["align", "--src", str(src), "--dst", str(src)])
    assert "is --src itself" in msg
    msg = one_line_error(capsys, ["align", "--src", str(src), "--dst", str(tmp_path / "d"), "--margin", "224"])
    assert "--margin must be >= 0 and smaller than --size 224" in msg
    msg = one_line_error(capsys, ["align", "--src", str(src), "--dst", str(tmp_path / "d"), "--size", "x"])
    assert "--size" in msg and "'x'" in msg
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    msg = one_line_error(capsys, ["align", "--src", str(src), "--dst", str(tmp_path / "d"), "--device", "cuda"])
    assert "no CUDA device" in msg
    assert not (tmp_path / "d").exists()

    run(capsys, src, tmp_path / "d", "--size", "32")
    msg = one_line_error(capsys, ["align", "--src", str(src), "--dst", str(tmp_path / "d"), "--size", "40"])
    assert "aligned with --size 32 --margin 0, not --size 40 --margin 0" in msg
    (tmp_path / "d" / align.REPORT_NAME).write_text("{half")
    msg = one_line_error(capsys, ["align", "--src", str(src), "--dst", str(tmp_path / "d"), "--size", "32"])
    assert "cannot read the report" in msg


def test_aligned_rafdb_originals_are_read_with_rafdb_image_dir(tmp_path, capsys):
    """The README's two commands on a generated RAF-DB: align basic/Image/original into basic/Image/mtcnn, then
    build the run's datasets with rafdb_image_dir: mtcnn -- the crops are used, and the split is the aligned one."""
    import shutil

    from conftest import train_argv
    from datasets_fer.synthetic import write_rafdb
    from datasets_fer.usb import build_fer_datasets
    from remop_usb.config import parse_args

    root = tmp_path / "RAF-DB"
    write_rafdb(root, num_train=14, num_test=7, size=32)
    image = root / "basic" / "Image"
    (image / "original").mkdir()
    for name in os.listdir(image / "aligned"):  # stand-ins for the originals, under the original names
        shutil.copy(image / "aligned" / name, image / "original" / name.replace("_aligned", ""))
    summary = run(capsys, image / "original", image / "mtcnn", "--size", "40")
    assert summary.startswith("align: 21 processed")
    assert sorted(n for n in os.listdir(image / "mtcnn") if n.endswith(".jpg")) == \
        sorted(os.listdir(image / "original"))

    built = {}
    for folder in ("aligned", "mtcnn"):
        args = parse_args(train_argv(str(root), tmp_path, save_name=folder, rafdb_image_dir=folder, num_labels=2,
                                     lb_imb_ratio=2, cache_dir=str(tmp_path / "cache")))
        built[folder] = (args, build_fer_datasets(args, "fixmatch"))
    capsys.readouterr()
    (aligned_args, aligned), (mtcnn_args, mtcnn) = built["aligned"], built["mtcnn"]
    for part in ("train_lb", "train_ulb", "eval"):
        assert all(os.path.dirname(p) == str(image / "mtcnn") for p in mtcnn[part].data)
        assert [os.path.basename(p).replace("_aligned", "") for p in aligned[part].data] == \
            [os.path.basename(p) for p in mtcnn[part].data]
        assert list(mtcnn[part].targets) == list(aligned[part].targets)
    assert mtcnn["train_lb"].__sample__(0)[0].size == (40, 40)  # the crops are what the run loads
    # N_k = floor(2 * 2^(-(k-1)/6)) = 2, 1, 1, 1, 1, 1, 1: 8 labeled images, the same in both runs
    assert len(mtcnn["train_lb"]) == 8
    assert mtcnn_args.split_sha256 == aligned_args.split_sha256

    argv = ["split", "--dataset", "rafdb", "--data_dir", str(root), "--num_labels", "2", "--lb_imb_ratio", "2",
            "--seed", "0", "--rafdb_image_dir", "mtcnn", "--cache_dir", str(tmp_path / "cache"), "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == mtcnn_args.split_sha256
