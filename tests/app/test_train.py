"""``wsss-ext train``: the run folder it writes, resuming after an interruption
(equal to an uninterrupted run), two gloo processes under torchrun (equal to
one process), and bad input (one clear message, exit status 2, nothing written)."""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from app_support import make_tags_folder

from python_models.methods.cam import CAM
from wsss_app import cli
from wsss_app.pipeline.runs import load_checkpoint, load_run
from wsss_app.pipeline.train_loop import epoch_plan

TINY = ["--method", "cam", "--backbone", "tiny", "--image-size", "32", "--no-progress"]


def _train(data, out, *extra):
    return cli.main(["train", "--data", str(data), "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tags_folder(tmp_path_factory.mktemp("tagged") / "mine", n=8)


def _parameters(run):
    return load_checkpoint(run)["model"]


def test_a_run_folder_holds_config_checkpoint_and_logs(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(folder, run, "--epochs", "2", "--batch-size", "3", "--seed", "5") == 0
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "cam" and config["overrides"] == {"num_classes": 4, "backbone": "tiny"}
    assert config["classes"] == ["checks", "dots", "rings", "stripes"] and config["images"] == 8
    assert (config["epochs"], config["batch_size"], config["image_size"], config["seed"]) == (2, 3, 32, 5)
    assert config["optimizer"]["name"] == "adamw" and config["optimizer"]["lr"] == 1e-3  # CAM states no optimizer
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(4))  # 8 // 3 = 2 full batches an epoch, the last dropped
    assert [int(r["epoch"]) for r in rows] == [1, 1, 2, 2] and set(rows[0]) == {"epoch", "step", "lr",
                                                                                  "classification", "loss"}
    assert float(rows[0]["lr"]) == 1e-3 and float(rows[-1]["lr"]) < float(rows[1]["lr"])  # polynomial decay
    log = json.loads((run / "log.json").read_text())
    assert log["epochs"][1]["loss"] == pytest.approx((float(rows[2]["loss"]) + float(rows[3]["loss"])) / 2)
    state = load_checkpoint(run)
    assert (state["epoch"], state["step"]) == (2, 4) and len(state["rng"]) == 1
    method, loaded = load_run(run)
    assert isinstance(method, CAM) and not method.training and loaded["epochs_done"] == 2
    assert all(torch.equal(method.state_dict()[k], v) for k, v in state["model"].items())
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]
    assert "trained cam for 2 epochs (4 steps)" in capsys.readouterr().out


def test_epoch_order_depends_on_the_seed_and_epoch_only():
    first, flips = epoch_plan(3, 1, 10, 4)
    again, flips_again = epoch_plan(3, 1, 10, 4)
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and torch.equal(flips, flips_again)
    assert [len(b) for b in first] == [4, 4] and len(set(torch.cat(first).tolist())) == 8
    assert not torch.equal(torch.cat(first), torch.cat(epoch_plan(3, 2, 10, 4)[0]))


def test_resume_after_an_interruption_equals_an_uninterrupted_run(folder, tmp_path, monkeypatch):
    args = ("--epochs", "3", "--batch-size", "4", "--seed", "1")
    assert _train(folder, tmp_path / "whole", *args) == 0

    def interrupted(self, step, max_steps):  # Ctrl-C in the middle of epoch 2 (steps 2, 3)
        if step == 3:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(CAM, "after_step", interrupted)
        assert _train(folder, tmp_path / "cut", *args) == 130  # the CLI's exit status for Ctrl-C
    cut = tmp_path / "cut"
    assert load_checkpoint(cut)["epoch"] == 1 and not [p for p in cut.iterdir() if p.name.startswith(".tmp-")]
    assert len(json.loads((cut / "log.json").read_text())["steps"]) == 2  # the log of the finished epoch only
    at_the_cut = _parameters(cut)
    assert cli.main(["train", "--out", str(cut), "--resume", "--no-progress"]) == 0
    whole, resumed = _parameters(tmp_path / "whole"), _parameters(cut)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not torch.equal(at_the_cut["head.classifier.weight"], resumed["head.classifier.weight"])
    assert (cut / "log.csv").read_text() == (tmp_path / "whole" / "log.csv").read_text()


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_processes_under_torchrun_equal_one_process(folder, tmp_path):
    # Batches of 3 split 2 + 1 over the processes: the share weighting is what makes them equal.
    args = ["--epochs", "2", "--batch-size", "3", "--batch-norm", "frozen", "--seed", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
               "127.0.0.1", "--master-port", str(_free_port()), "-m", "wsss_app", "train", "--data", str(folder),
               "--out", str(tmp_path / "ddp"), *TINY, *args]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes" in done.stdout
    assert _train(folder, tmp_path / "one", *args) == 0
    ddp, one = _parameters(tmp_path / "ddp"), _parameters(tmp_path / "one")
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    assert len(load_checkpoint(tmp_path / "ddp")["rng"]) == 2
    logged = [json.loads((tmp_path / r / "log.json").read_text())["steps"] for r in ("ddp", "one")]
    assert [row["loss"] for row in logged[0]] == pytest.approx([row["loss"] for row in logged[1]], rel=1e-5)


@pytest.mark.parametrize("case, message", [
    ("neither layout", "not a dataset: looked for the PASCAL VOC layout"),
    ("unknown method", "unknown method 'no_such_method'; the WSSS methods are"),
    ("self-supervised method", "method 'swav' is not a WSSS method"),
    ("method needing boxes", "method 'simple_does_it' trains on batches with ['boxes', 'box_classes', 'targets']"),
    ("unknown setting", "--set: CAM got unexpected keyword argument(s) ['no_such_setting']"),
    ("batch larger than the data", "--batch-size 9 is larger than the 8 training images"),
])
def test_bad_input_is_one_clear_message_and_writes_nothing(folder, tmp_path, capsys, case, message):
    (tmp_path / "empty").mkdir()
    args = {"neither layout": ["--data", str(tmp_path / "empty"), "--method", "cam"],
            "unknown method": ["--data", str(folder), "--method", "no_such_method"],
            "self-supervised method": ["--data", str(folder), "--method", "swav"],
            "method needing boxes": ["--data", str(folder), "--method", "simple_does_it"],
            "unknown setting": ["--data", str(folder), "--method", "cam", "--set", "no_such_setting=1"],
            "batch larger than the data": ["--data", str(folder), "--method", "cam", "--batch-size", "9"]}[case]
    out = tmp_path / "run"
    assert cli.main(["train", "--out", str(out), "--backbone", "tiny", "--image-size", "32", "--no-progress",
                     *args]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("wsss-ext train: ") and message in error and "\n" not in error
    assert not out.exists()


def test_an_existing_run_needs_resume_and_resume_keeps_its_settings(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(folder, run, "--epochs", "1", "--batch-size", "8") == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert _train(folder, run, "--epochs", "1", "--batch-size", "8") == 2
    assert "already holds a run; --resume continues it" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "4", "--no-progress"]) == 2
    assert "drop --epochs 4 (the run has 1)" in capsys.readouterr().err
    (run / "checkpoint.pt").write_bytes(before[: len(before) // 2])
    assert cli.main(["train", "--out", str(run), "--resume", "--no-progress"]) == 2
    assert "checkpoint.pt: cannot read the checkpoint, the file is damaged" in capsys.readouterr().err


def test_an_image_damaged_past_its_header_is_skipped_before_training(tmp_path, capsys):
    data = make_tags_folder(tmp_path / "mine", n=5)
    (data / "img2.png").write_bytes((data / "img2.png").read_bytes()[:120])  # the header, then nothing
    run = tmp_path / "run"
    (run).mkdir()
    (run / "config.json").write_text("{}")  # a run that never finished an epoch is started afresh
    assert _train(data, run, "--epochs", "1", "--batch-size", "2") == 0
    assert "skipped img2.png: cannot read the image (image file is truncated)" in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["images"] == 4
