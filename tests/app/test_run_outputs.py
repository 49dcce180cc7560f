"""A trained run's outputs: ``wsss-ext cams`` (files ``refine`` reads, equal
to the method's ``cams()``), ``wsss-ext pseudo-labels`` (the method's rule,
scored against the masks), both on a VOC-layout folder and a tags.csv folder,
sharded over two gloo processes; a damaged run or data naming classes the
run lacks is one clear error that writes nothing."""

import os
import re
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from app_support import make_tags_folder, make_voc_folder

from wsss_app import cli
from wsss_app.pipeline.datasets import open_dataset
from wsss_app.pipeline.runs import load_run
from wsss_ext.io import read_label_map


def _trained(base, layout):
    """(data folder, its images folder, run folder) after two training steps of CAM on a tiny backbone."""
    if layout == "voc":
        data = make_voc_folder(base / "VOC2012", n=8)
        images, batch = data / "JPEGImages", "3"  # split train: 6 images
    else:
        data = images = make_tags_folder(base / "mine", n=8)
        batch = "4"
    run = base / "run"
    assert cli.main(["train", "--method", "cam", "--backbone", "tiny", "--data", str(data), "--out", str(run),
                     "--epochs", "1", "--batch-size", batch, "--image-size", "32", "--no-progress"]) == 0
    return data, images, run


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory):
    return _trained(tmp_path_factory.mktemp("voc"), "voc")


@pytest.fixture(scope="module")
def tags_run(tmp_path_factory):
    return _trained(tmp_path_factory.mktemp("tags"), "tags")


@pytest.fixture(params=["voc", "tags"])
def trained(request):
    return request.getfixturevalue(f"{request.param}_run")


def test_cams_are_the_methods_cams_in_the_files_refine_reads(trained, tmp_path, capsys):
    data, images, run = trained
    cams = tmp_path / "cams"
    assert cli.main(["cams", "--run", str(run), "--images", str(data), "--out", str(cams), "--scales", "1,0.5",
                     "--no-progress"]) == 0
    method, config = load_run(run)
    dataset = open_dataset(data, classes=config["classes"])
    assert sorted(p.stem for p in cams.glob("*.npy")) == sorted(s.name for s in dataset.samples)
    tags = dataset.tags()
    for index, sample in enumerate(dataset.samples):
        saved = np.load(cams / f"{sample.name}.npy")
        assert saved.dtype == np.float32 and saved.shape == (len(config["classes"]), 8, 8)  # stride 4 of 32 px
        image = torch.from_numpy(dataset.read_image(index)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            expected = F.interpolate(method.cams(image, tags[index : index + 1], scales=(1, 0.5)), size=(8, 8),
                                     mode="area")[0]
        torch.testing.assert_close(torch.from_numpy(saved), expected)
        assert (saved[(tags[index] == 0).numpy()] == 0).all() and saved.max() <= 1  # untagged classes are zero
    capsys.readouterr()
    masks = tmp_path / "refined"
    assert cli.main(["refine", "--images", str(images), "--cams", str(cams), "--out", str(masks),
                     "--no-progress"]) == 0
    skipped = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipped")]
    outside = {p.name for p in images.glob("*.jpg")} - {f"{s.name}.jpg" for s in dataset.samples}  # VOC's val
    assert sorted(skipped) == sorted(f"skipped {name}: no CAM file <stem>.npy for it" for name in outside)
    for index, sample in enumerate(dataset.samples):
        labels = set(np.unique(read_label_map(masks / f"{sample.name}.png")).tolist())
        assert labels <= {0} | {c + 1 for c in sample.tags}


def test_pseudo_labels_follow_the_methods_rule_and_are_scored(trained, tmp_path, capsys):
    data, _, run = trained
    out = tmp_path / "pseudo"
    assert cli.main(["pseudo-labels", "--run", str(run), "--data", str(data), "--out", str(out),
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    method, config = load_run(run)
    dataset = open_dataset(data, classes=config["classes"])
    truth_pixels = ignored = 0
    confusion = torch.zeros(5, 5, dtype=torch.int64)
    for index, sample in enumerate(dataset.samples):
        saved = read_label_map(out / f"{sample.name}.png")
        image = torch.from_numpy(dataset.read_image(index)).permute(2, 0, 1)[None].float() / 255
        expected = method.pseudo_labels(image, dataset.tags()[index : index + 1])[0].numpy()
        assert np.array_equal(saved, expected)
        assert set(np.unique(saved).tolist()) <= {0, 255} | {c + 1 for c in sample.tags}
        truth = dataset.read_mask(index)
        scored = (truth != 255) & (saved != 255)
        truth_pixels, ignored = truth_pixels + (truth != 255).sum(), ignored + ((truth != 255) & ~scored).sum()
        np.add.at(confusion.numpy(), (truth[scored], saved[scored]), 1)
    iou = confusion.diag() / (confusion.sum(0) + confusion.sum(1) - confusion.diag())
    miou = 100 * iou[~iou.isnan()].mean().item()
    shown = re.search(r"mIoU (\d+\.\d+) against the data's masks(, over the (\d+\.\d)%)?", printed)
    assert shown and float(shown[1]) == pytest.approx(miou, abs=0.006)
    if ignored:  # the share of the masks' pixels the pseudo-masks label
        assert float(shown[3]) == pytest.approx(100 * (1 - ignored / truth_pixels), abs=0.06)
    else:
        assert shown[2] is None


def _pseudo_rank(rank, world_size, port, run, data, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    assert cli.main(["pseudo-labels", "--run", run, "--data", data, "--out", out, "--no-progress"]) == 0


def test_pseudo_labels_shard_over_two_gloo_processes(tmp_path):
    data = make_tags_folder(tmp_path / "mine", n=5)
    run = tmp_path / "run"
    assert cli.main(["train", "--method", "cam", "--backbone", "tiny", "--data", str(data), "--out", str(run),
                     "--epochs", "1", "--batch-size", "5", "--image-size", "32", "--no-progress"]) == 0
    (data / "img4.png").write_bytes((data / "img4.png").read_bytes()[:120])  # a header, then nothing
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_pseudo_rank, args=(2, port, str(run), str(data), str(tmp_path / "two")), nprocs=2, join=True)
    assert cli.main(["pseudo-labels", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "one"),
                     "--no-progress"]) == 0
    names = sorted(p.name for p in (tmp_path / "one").glob("*.png"))
    assert names == [f"img{i}.png" for i in range(4)]  # the truncated image skipped
    assert sorted(p.name for p in (tmp_path / "two").glob("*.png")) == names
    for name in names:
        assert np.array_equal(read_label_map(tmp_path / "two" / name), read_label_map(tmp_path / "one" / name))


def test_an_unreadable_image_is_skipped_by_name(tags_run, tmp_path, capsys):
    data, _, run = tags_run
    broken = tmp_path / "mine"
    broken.mkdir()
    for path in data.glob("img*.png"):
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "tags.csv").write_text((data / "tags.csv").read_text())
    (broken / "img2.png").write_bytes((broken / "img2.png").read_bytes()[:120])
    assert cli.main(["cams", "--run", str(run), "--images", str(broken), "--out", str(tmp_path / "cams"),
                     "--no-progress"]) == 0
    assert sorted(p.stem for p in (tmp_path / "cams").glob("*.npy")) == [f"img{i}" for i in range(8) if i != 2]
    assert re.search(r"skipped img2: .*truncated", capsys.readouterr().err)


def test_untagged_images_get_every_class(voc_run, tmp_path, capsys):
    data, images, run = voc_run
    assert cli.main(["cams", "--run", str(run), "--images", str(images), "--out", str(tmp_path / "cams"),
                     "--scales", "1", "--no-flip", "--no-progress"]) == 0
    assert "has no tags: every image has every class's CAM" in capsys.readouterr().err
    saved = np.load(next((tmp_path / "cams").glob("*.npy")))
    assert saved.shape[0] == 20 and (saved.max((1, 2)) > 0).sum() > 4  # VOC's 20 classes, not just the tags
    assert cli.main(["pseudo-labels", "--run", str(run), "--data", str(images), "--out", str(tmp_path / "pl")]) == 2
    assert "has no tags" in capsys.readouterr().err and not (tmp_path / "pl").exists()


BAD = [
    ("class the run lacks", "tags images with classes the run was not trained on: 'zebra' (img1.png)"),
    ("damaged checkpoint", "checkpoint.pt: cannot read the checkpoint, the file is damaged"),
    ("truncated checkpoint", "checkpoint.pt: cannot read the checkpoint, the file is damaged"),
    ("no checkpoint", "has no checkpoint.pt: no epoch of it has finished"),
    ("no run", "does not exist (wsss-ext train --out makes one)"),
]


@pytest.mark.parametrize("command, case, message",
                         [(command, *bad) for command in ("cams", "pseudo-labels") for bad in BAD]
                         + [("cams", "bad scales", "--scales must be comma-separated numbers")])
def test_bad_runs_and_data_are_one_clear_message_and_write_nothing(tags_run, tmp_path, capsys, command, case,
                                                                   message):
    _, _, run = tags_run
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("config.json", "checkpoint.pt"):
        (copy / name).write_bytes((run / name).read_bytes())
    mine = make_tags_folder(tmp_path / "mine", n=3)
    extra = []
    if case == "class the run lacks":
        (mine / "tags.csv").write_text("img0.png,dots\nimg1.png,zebra rings\nimg2.png,dots\n")
    elif case == "damaged checkpoint":
        (copy / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    elif case == "truncated checkpoint":
        (copy / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:5000])
    elif case == "no checkpoint":
        (copy / "checkpoint.pt").unlink()
    elif case == "no run":
        copy = tmp_path / "nowhere"
    else:
        extra = ["--scales", "1,two"]
    out = tmp_path / "out"
    flag = "--images" if command == "cams" else "--data"
    assert cli.main([command, "--run", str(copy), flag, str(mine), "--out", str(out), "--no-progress", *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"wsss-ext {command}: ") and message in error and "\n" not in error
    assert not out.exists()
