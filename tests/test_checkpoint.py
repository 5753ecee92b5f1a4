"""Checkpoints are written atomically and checked when read: a damaged or foreign file is named in one line, and a
damaged latest_model.pth falls back to latest_model.prev.pth."""

import os
import shutil

import pytest
import torch

from conftest import build_for, one_line_error, restored, train_argv
from remop_usb.launch import main
from remop_usb.usb_compat import checkpointing


def _save_untrained(algorithm, folder):
    """A checkpoint of a freshly built algorithm, written by its own save_model."""
    algorithm.epoch = 0
    algorithm.save_model("latest_model.pth", str(folder))
    return os.path.join(folder, "latest_model.pth")


@pytest.fixture(scope="module")
def trained(tiny_rafdb, tmp_path_factory):
    """The save dir of a finished 3-iteration ReMoP+FixMatch run (checkpoints after iterations 2 and 3)."""
    save_dir = tmp_path_factory.mktemp("trained")
    assert main(train_argv(tiny_rafdb, save_dir, save_name="run", num_train_iter=3, num_eval_iter=2)) == 0
    yield os.path.join(save_dir, "run")
    shutil.rmtree(save_dir, ignore_errors=True)  # ~0.5 GB of checkpoints, not kept to the session's end


@pytest.fixture(scope="module")
def remop(tiny_rafdb, tmp_path_factory):
    return build_for(tiny_rafdb, tmp_path_factory.mktemp("remop"), save_name="remop")


def test_a_finished_run_leaves_complete_checkpoints_and_no_temporaries(trained):
    names = sorted(os.listdir(trained))
    assert not [n for n in names if n.endswith(".tmp")]
    for name in ("latest_model.pth", "latest_model.prev.pth", "model_best.pth"):
        ckpt = torch.load(os.path.join(trained, name), map_location="cpu", weights_only=False)
        assert set(checkpointing.REQUIRED_KEYS) <= set(ckpt)
    latest = torch.load(os.path.join(trained, "latest_model.pth"), map_location="cpu", weights_only=False)
    assert latest["it"] == 3
    state = latest[checkpointing.STATE_KEY]
    assert state["run"] == {"algorithm": "fixmatch+remop", "net": "resnet18_fer", "num_classes": 7}
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    # both train loaders consumed all 3 batches of the only epoch
    assert {k: (v["epoch"], v["position"]) for k, v in state["loaders"].items()} == {
        "train_lb": (0, 3), "train_ulb": (0, 3)}


def test_truncated_latest_falls_back_to_the_previous_checkpoint(trained, remop, tmp_path, capsys):
    good = os.path.join(trained, "latest_model.pth")
    previous = torch.load(good, map_location="cpu", weights_only=False)
    previous["it"], previous["best_it"] = 1, 0  # an earlier checkpoint, told apart by its counters
    torch.save(previous, tmp_path / "latest_model.prev.pth")
    data = open(good, "rb").read()
    (tmp_path / "latest_model.pth").write_bytes(data[: len(data) // 2])  # what a non-atomic writer leaves
    capsys.readouterr()
    remop.load_model(str(tmp_path / "latest_model.pth"))
    assert remop.it == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"checkpoint {tmp_path / 'latest_model.pth'} is unreadable: truncated" in err[0]
    assert err[0].endswith(f"using the previous one, {tmp_path / 'latest_model.prev.pth'}")


def test_damaged_latest_and_previous_name_the_latest(remop, tmp_path):
    (tmp_path / "latest_model.pth").write_bytes(os.urandom(4096))
    (tmp_path / "latest_model.prev.pth").write_bytes(b"")
    assert one_line_error(remop.load_model, str(tmp_path / "latest_model.pth")).startswith(
        f"checkpoint {tmp_path / 'latest_model.pth'} is unreadable: truncated or not a PyTorch checkpoint (")


@pytest.mark.parametrize("content,expected", [
    ([1, 2, 3], "is not a USB checkpoint (it holds a list, expected a dict with keys model, ema_model"),
    ({"model": {}, "ema_model": {}}, "is not a USB checkpoint (it lacks 'optimizer'"),
])
def test_a_file_that_is_no_usb_checkpoint(remop, tmp_path, content, expected):
    torch.save(content, tmp_path / "x.pth")
    message = one_line_error(remop.load_model, str(tmp_path / "x.pth"))
    assert message.startswith(f"checkpoint {tmp_path / 'x.pth'} {expected}")


def test_a_checkpoint_of_another_net_names_the_first_mismatched_tensor(tiny_rafdb, remop, tmp_path):
    other = build_for(tiny_rafdb, tmp_path, save_name="wrn", net="wrn_28_2")
    path = _save_untrained(other, tmp_path / "wrn")
    theirs, ours = other.model.state_dict(), remop.model.state_dict()
    first = next(k for k, t in ours.items() if k not in theirs or theirs[k].shape != t.shape)
    message = one_line_error(remop.load_model, path)
    assert message.startswith(f"checkpoint {path} ")
    assert f"model tensor '{first}'" in message
    assert "net resnet18_fer (the checkpoint's net is wrn_28_2)" in message


def test_a_checkpoint_of_another_algorithm_is_refused(tiny_rafdb, remop, tmp_path):
    other = build_for(tiny_rafdb, tmp_path, config="config/demo/fixmatch.yaml", save_name="fixmatch")
    path = _save_untrained(other, tmp_path / "fixmatch")
    assert one_line_error(remop.load_model, path) == (
        f"checkpoint {path} was written by algorithm fixmatch, expected a checkpoint of fixmatch+remop")


def test_resume_from_an_explicit_foreign_checkpoint_is_one_line(tiny_rafdb, trained, tmp_path, capsys):
    path = str(tmp_path / "foreign.pth")
    torch.save({"weights": torch.zeros(3)}, path)
    capsys.readouterr()
    rc = main(train_argv(tiny_rafdb, tmp_path, save_name="again", resume=True, load_path=path))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0] == (f"error: checkpoint {path} is not a USB checkpoint (it lacks 'model'; expected keys "
                      f"{', '.join(checkpointing.REQUIRED_KEYS)})")
    missing = str(tmp_path / "nowhere.pth")
    rc = main(train_argv(tiny_rafdb, tmp_path, save_name="again", resume=True, load_path=missing))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and missing in err[0]


def test_a_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "latest_model.pth"
    checkpointing.atomic_save({"it": 1, "w": torch.arange(10)}, path, keep_previous=True)
    before = path.read_bytes()
    with pytest.raises(AttributeError, match=r"^Can't pickle local object '.*<locals>\.<lambda>'$"):  # unpicklable
        checkpointing.atomic_save({"it": 2, "bad": lambda: None}, path, keep_previous=True)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["latest_model.pth"]


def test_saving_keeps_the_replaced_latest_and_removes_stale_temporaries(tmp_path):
    path = tmp_path / "latest_model.pth"
    stale = tmp_path / ".latest_model.pth.abc123.tmp"  # what a save killed mid-write leaves
    stale.write_bytes(b"half")
    checkpointing.atomic_save({"it": 1}, path, keep_previous=True)
    checkpointing.atomic_save({"it": 2}, path, keep_previous=True)
    assert checkpointing.remove_stale_temporaries(tmp_path) == [str(stale)]
    assert sorted(os.listdir(tmp_path)) == ["latest_model.prev.pth", "latest_model.pth"]
    assert torch.load(path)["it"] == 2 and torch.load(tmp_path / "latest_model.prev.pth")["it"] == 1


def test_a_best_step_writes_its_state_once_and_latest_names_the_same_file(remop, tmp_path, monkeypatch):
    """At a checkpoint step that is the best so far, model_best.pth is written and latest_model.pth becomes a second
    name of it (hard link); the replaced latest is kept as .prev, and a step that is not the best writes latest
    alone, leaving model_best.pth as it was."""
    run = tmp_path / "run"
    serialised = []
    real_save = checkpointing.atomic_save

    def counting_save(obj, path, keep_previous=False):
        serialised.append(os.path.basename(path))
        return real_save(obj, path, keep_previous)

    def save_at(it, best_it):
        remop.it, remop.best_it, remop._remop_checkpoint_due = it, best_it, True
        checkpointing.save_due_checkpoint(remop)

    with restored(remop):
        remop.save_dir, remop.save_name, remop.epoch = str(tmp_path), "run", 0
        monkeypatch.setattr(checkpointing, "atomic_save", counting_save)
        save_at(1, 0)  # not the best: latest alone (a checkpoint stores completed iterations, it + 1)
        save_at(3, 3)  # the best: model_best.pth, then latest as its second name
        assert serialised == ["latest_model.pth", "model_best.pth"]
        assert os.path.samefile(run / "latest_model.pth", run / "model_best.pth")
        assert torch.load(run / "latest_model.pth", weights_only=False)["it"] == 4
        assert torch.load(run / "latest_model.prev.pth", weights_only=False)["it"] == 2
        save_at(4, 3)  # not the best: latest is replaced, the best keeps its file
    assert torch.load(run / "latest_model.pth", weights_only=False)["it"] == 5
    assert torch.load(run / "model_best.pth", weights_only=False)["it"] == 4
    assert not [n for n in os.listdir(run) if n.endswith(".tmp")]


def test_resume_without_latest_uses_the_previous_checkpoint(tiny_rafdb, trained, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("latest_model.prev.pth", "split.json"):  # a kill between keeping the previous and the rename
        shutil.copy(os.path.join(trained, name), run_dir / name)
    capsys.readouterr()
    assert main(train_argv(tiny_rafdb, tmp_path, save_name="run", num_train_iter=3, num_eval_iter=2,
                           resume=True)) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {run_dir / 'latest_model.pth'} does not exist" in err
    assert f"using the previous one, {run_dir / 'latest_model.prev.pth'}" in err
    assert "Model loaded" in (run_dir / "log.txt").read_text()
    assert torch.load(run_dir / "latest_model.pth", weights_only=False)["it"] == 3


def test_hook_state_is_what_a_hook_declares_else_its_numbers():
    from types import SimpleNamespace

    class Declaring:
        checkpoint_attrs = ("margins",)

        def __init__(self):
            self.margins, self.every, self.records = torch.tensor([0.5, 0.7]), 10, [{"it": 1}]

    class Undeclared:
        def __init__(self):
            self.rho, self.count, self.name, self.fn = torch.tensor([1.0]), 3, "dash", print

    algorithm = SimpleNamespace(hooks_dict={"M": Declaring(), "U": Undeclared()})
    state = checkpointing.hook_state(algorithm)
    assert state.keys() == {"M", "U"}
    assert list(state["M"]) == ["margins"]  # not the setting `every`, not the log `records`
    assert sorted(state["U"]) == ["count", "rho"]  # tensors and numbers; not the string or the function
    assert torch.equal(state["M"]["margins"], torch.tensor([0.5, 0.7]))

    fresh = SimpleNamespace(hooks_dict={"M": Declaring(), "U": Undeclared()})
    fresh.hooks_dict["M"].every = 20  # a changed setting of a declaring hook survives the restore
    checkpointing.restore_hook_state(fresh, {"M": {"margins": torch.tensor([0.1, 0.2]), "every": 10},
                                             "U": {"rho": torch.tensor([2.0]), "count": 4}})
    assert torch.equal(fresh.hooks_dict["M"].margins, torch.tensor([0.1, 0.2])) and fresh.hooks_dict["M"].every == 20
    assert torch.equal(fresh.hooks_dict["U"].rho, torch.tensor([2.0])) and fresh.hooks_dict["U"].count == 4
