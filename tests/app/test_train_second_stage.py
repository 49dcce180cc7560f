"""``wsss-ext train --cam-run``: IRNet and AffinityNet trained on the labels of a
trained CAM run's CAMs, loadable, walked by ``refine --run``, resumable; SEC
and DSRG on its localisation cues; and the clear errors (no --cam-run,
classes that differ)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from app_support import make_tags_folder, make_voc_folder

from wsss_app import cli
from wsss_app.pipeline.runs import load_checkpoint, load_run

SMALL = ["--image-size", "32", "--batch-size", "4", "--no-progress"]


def _train(data, out, *extra):
    return cli.main(["train", "--data", str(data), "--out", str(out), *SMALL, *extra])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tags_folder(tmp_path_factory.mktemp("tagged") / "mine", n=8)


@pytest.fixture(scope="module")
def cam_run(folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "cam"
    assert _train(folder, run, "--method", "cam", "--backbone", "tiny", "--epochs", "1") == 0
    return run


@pytest.fixture(scope="module")
def cam_files(folder, cam_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("cams")
    assert cli.main(["cams", "--run", str(cam_run), "--images", str(folder), "--out", str(out),
                     "--no-progress"]) == 0
    return out


@pytest.mark.parametrize("method, extra, walk", [
    ("irnet", ["--set", "radius=2"], "the trained boundary network of irnet"),
    ("affinitynet", [], "the trained affinity network of affinitynet"),
])
def test_a_second_stage_trains_on_the_cam_run_and_refine_walks_it(method, extra, walk, folder, cam_run, cam_files,
                                                                  tmp_path, capsys):
    run = tmp_path / method
    assert _train(folder, run, "--method", method, "--cam-run", str(cam_run), "--epochs", "1", *extra) == 0
    out = capsys.readouterr().out
    assert f"{method} labels of 8 images from the CAMs of the CAM run {cam_run.resolve()}" in out
    assert f"{method} starts from the CAM network's backbone weights" in out  # resnet_tiny on both
    assert f"trained {method} for 1 epochs (2 steps)" in out
    config = json.loads((run / "config.json").read_text())
    assert config["cam_run"] == str(cam_run.resolve())
    assert config["overrides"]["cam_network"] is None and config["overrides"]["backbone"] == "resnet_tiny"
    model, loaded = load_run(run)
    assert type(model).KEY == method and loaded["epochs_done"] == 1
    assert cli.main(["refine", "--images", str(folder), "--cams", str(cam_files), "--out", str(tmp_path / "masks"),
                     "--run", str(run), "--chain", "rw", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"random walk: {walk}" in out and "wrote 8 masks" in out


@pytest.mark.parametrize("method", ["sec", "dsrg"])
def test_sec_and_dsrg_train_on_the_cam_runs_localisation_cues(method, folder, cam_run, tmp_path, capsys,
                                                              monkeypatch):
    from python_models import METHODS
    from python_models.pseudo import localisation_cues, normalize_cams

    seen = []
    method_class = METHODS[method]
    losses = method_class.losses

    def spy(self, batch, step=0):
        seen.append(batch["seeds"].clone())
        return losses(self, batch, step)

    monkeypatch.setattr(method_class, "losses", spy)
    run = tmp_path / method
    assert _train(folder, run, "--method", method, "--backbone", "tiny", "--cam-run", str(cam_run),
                  "--epochs", "1") == 0
    out = capsys.readouterr().out
    assert f"{method} labels of 8 images from the CAMs of the CAM run" in out
    assert f"trained {method} for 1 epochs (2 steps)" in out
    model, config = load_run(run)
    assert type(model).KEY == method and "cam_network" not in config["overrides"]
    # The seeds it trained on: SEC's rule on the CAM run's CAMs of the training images, sampled at the cell
    # centres of the network's 5 x 5 output (each batch image possibly mirrored with its seeds).
    from wsss_app.pipeline.datasets import open_dataset
    from wsss_app.pipeline.train_loop import resized_images

    dataset = open_dataset(folder, decode=True)
    images = resized_images(dataset, 32)
    pixels = torch.stack([images[i][1] for i in range(len(images))])
    cam_model, _ = load_run(cam_run)
    with torch.no_grad():
        cues = localisation_cues(cam_model.cams(pixels, dataset.tags()), dataset.tags())
    centres = torch.tensor([3, 9, 16, 22, 28])  # nearest-exact: floor((i + 0.5) * 32 / 5)
    expected = cues[:, centres][:, :, centres]
    assert len(seen) == 2 and all(s.shape == (4, 5, 5) for s in seen)
    for seeds in torch.cat(seen):
        assert any(torch.equal(seeds, e) or torch.equal(seeds, e.flip(-1)) for e in expected)
    assert torch.cat(seen).unique().tolist() != [255]  # cues, not an all-ignore map
    cams = normalize_cams(torch.tensor([[[[0.9, 0.3], [0.1, 0.01]]]]) * 5)
    assert localisation_cues(cams, torch.ones(1, 1)).tolist() == [[[1, 1], [255, 0]]]


def test_a_frozen_backbone_stays_the_cam_networks(folder, cam_run, tmp_path, capsys):
    run = tmp_path / "irnet"
    assert _train(folder, run, "--method", "irnet", "--cam-run", str(cam_run), "--epochs", "1",
                  "--set", "radius=2", "--set", "freeze_backbone=true") == 0
    trained = load_checkpoint(run)["model"]
    cam = load_checkpoint(cam_run)["model"]
    backbone = [k for k in cam if k.startswith("backbone.") and k.endswith("weight")]
    assert backbone and all(torch.equal(trained[k], cam[k]) for k in backbone)  # frozen: still the CAM network's


def test_resume_equals_an_uninterrupted_run_without_cam_run_again(folder, cam_run, tmp_path, capsys, monkeypatch):
    from python_models.methods.affinitynet import AffinityNet

    common = ["--method", "affinitynet", "--cam-run", str(cam_run), "--seed", "3", "--epochs", "2"]
    assert _train(folder, tmp_path / "whole", *common) == 0

    def interrupted(self, step, max_steps):  # Ctrl-C in the middle of epoch 2 (steps 2, 3)
        if step == 3:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(AffinityNet, "after_step", interrupted)
        assert _train(folder, tmp_path / "cut", *common) == 130
    cut = tmp_path / "cut"
    assert load_checkpoint(cut)["epoch"] == 1
    capsys.readouterr()
    assert cli.main(["train", "--out", str(cut), "--resume", "--cam-run", str(tmp_path), "--no-progress"]) == 2
    assert f"--resume: the run's CAM run is {cam_run.resolve()}, not {tmp_path}; drop --cam-run" in (
        capsys.readouterr().err)
    assert cli.main(["train", "--out", str(cut), "--resume", "--no-progress"]) == 0  # the CAM run from its config
    assert "affinitynet labels of 8 images" in capsys.readouterr().out
    whole, resumed = load_checkpoint(tmp_path / "whole")["model"], load_checkpoint(cut)["model"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert (cut / "log.csv").read_text() == (tmp_path / "whole" / "log.csv").read_text()


def test_without_cam_run_it_says_to_pass_one(folder, tmp_path, capsys):
    assert _train(folder, tmp_path / "run", "--method", "irnet") == 2
    err = capsys.readouterr().err
    assert "pass --cam-run" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_cam_run_on_other_classes_is_refused(cam_run, tmp_path, capsys):
    voc = make_voc_folder(tmp_path / "voc", n=8)
    assert _train(voc, tmp_path / "run", "--method", "affinitynet", "--cam-run", str(cam_run)) == 2
    err = capsys.readouterr().err
    assert "was trained on the classes ['checks', 'dots', 'rings', 'stripes'], not the dataset's" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run" / "config.json").exists()


def test_cam_run_is_only_for_second_stages(folder, cam_run, tmp_path, capsys):
    assert _train(folder, tmp_path / "run", "--method", "cam", "--cam-run", str(cam_run)) == 2
    assert "--cam-run is for the second stages" in capsys.readouterr().err


def test_two_gloo_processes_nearly_equal_one_process(folder, cam_run, tmp_path):
    # Each process computes every image's labels, then takes its share of each batch (3 split 2 + 1) with them.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["--method", "irnet", "--cam-run", str(cam_run), "--set", "radius=2", "--epochs", "1",
            "--batch-size", "3", "--batch-norm", "frozen", "--seed", "2", "--image-size", "32", "--no-progress"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
               "127.0.0.1", "--master-port", str(port), "-m", "wsss_app", "train", "--data", str(folder),
               "--out", str(tmp_path / "ddp"), *args]
    done = subprocess.run(command, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes" in done.stdout and done.stdout.count("irnet labels of 8 images") == 1  # rank 0 says it
    assert cli.main(["train", "--data", str(folder), "--out", str(tmp_path / "one"), *args]) == 0
    # IRNet's terms are means over each process's own pairs (not over the batch), so the share weighting is not
    # exact for it (train_loop's docstring): the losses agree closely, not bit for bit.
    logged = [[row["loss"] for row in json.loads((tmp_path / r / "log.json").read_text())["steps"]]
              for r in ("ddp", "one")]
    assert len(logged[0]) == 2 and logged[0] == pytest.approx(logged[1], rel=1e-2)
    ddp, one = load_checkpoint(tmp_path / "ddp")["model"], load_checkpoint(tmp_path / "one")["model"]
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], rtol=0, atol=2e-2, msg=name)
