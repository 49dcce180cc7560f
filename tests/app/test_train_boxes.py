"""``wsss-ext train --method simple_does_it``: round 1 of Simple Does It on a VOC
folder's <bndbox> boxes (the method's initial labels of them), later rounds
on the previous round's labels (``--previous-round``), and the clear errors
for data without boxes and for a previous round that does not fit."""

import json

import numpy as np
import torch
from app_support import VOC_STAND_INS, make_voc_folder
from PIL import Image

from wsss_app import cli
from wsss_app.pipeline.datasets import open_dataset
from wsss_app.pipeline.runs import load_run


def _voc_with_boxes(root):
    """make_voc_folder's layout, each object given the box of its mask."""
    make_voc_folder(root, n=8)
    for mask_path in sorted((root / "SegmentationClass").glob("*.png")):
        mask = np.array(Image.open(mask_path))
        objects = ""
        for label in sorted(set(np.unique(mask).tolist()) - {0, 255}):
            ys, xs = np.nonzero(mask == label)
            objects += (f"<object><name>{VOC_STAND_INS[label - 1]}</name><bndbox><xmin>{xs.min() + 1}</xmin>"
                        f"<ymin>{ys.min() + 1}</ymin><xmax>{xs.max() + 1}</xmax><ymax>{ys.max() + 1}</ymax>"
                        f"</bndbox></object>")
        (root / "Annotations" / f"{mask_path.stem}.xml").write_text(f"<annotation>{objects}</annotation>")
    return root


def test_voc_boxes_are_read_and_scaled(tmp_path):
    voc = _voc_with_boxes(tmp_path / "voc")
    dataset = open_dataset(voc, "train", classes=VOC_STAND_INS)
    assert dataset.has_boxes
    sample = dataset.samples[0]
    mask = np.array(Image.open(voc / "SegmentationClass" / f"{sample.name}.png"))
    column, x0, y0, x1, y1 = sample.boxes[0]
    ys, xs = np.nonzero(mask == column + 1)
    assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # 0-based, exclusive ends
    boxes, classes = dataset.boxes(64)  # the 32-pixel images resized to 64
    assert boxes[0, 0].tolist() == [2 * x0, 2 * y0, 2 * x1, 2 * y1] and classes[0, 0] == column
    assert (classes[:, len(sample.boxes):][0] == -1).all()


def test_simple_does_it_trains_round_one_on_the_boxes(tmp_path, capsys):
    voc = _voc_with_boxes(tmp_path / "voc")
    run = tmp_path / "sdi"
    assert cli.main(["train", "--data", str(voc), "--split", "train", "--out", str(run), "--method",
                     "simple_does_it", "--backbone", "tiny", "--image-size", "32", "--batch-size", "3",
                     "--epochs", "1", "--no-progress"]) == 0
    assert "trained simple_does_it for 1 epochs (2 steps)" in capsys.readouterr().out
    model, config = load_run(run)
    assert type(model).KEY == "simple_does_it" and config["epochs_done"] == 1
    assert json.loads((run / "log.json").read_text())["steps"][0]["segmentation"] > 0
    assert torch.isfinite(torch.tensor([row["loss"] for row in json.loads((run / "log.json").read_text())["steps"]])).all()


def test_voc_without_boxes_is_refused(tmp_path, capsys):
    voc = make_voc_folder(tmp_path / "voc", n=8)
    assert cli.main(["train", "--data", str(voc), "--out", str(tmp_path / "run"), "--method", "simple_does_it",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "method 'simple_does_it' trains on batches with ['boxes', 'box_classes', 'targets']" in err
    assert "its boxes come from a VOC folder's Annotations (<bndbox>)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_flipped_images_boxes_label_the_flipped_targets(tmp_path):
    from wsss_app.commands.train import _box_extras
    from wsss_app.pipeline.runs import build_method

    voc = _voc_with_boxes(tmp_path / "voc")
    dataset = open_dataset(voc, "train")
    config = {"method": "simple_does_it", "overrides": {"num_classes": 20, "backbone": "tiny"}, "image_size": 32}
    extras, flippers, init = _box_extras(config, dataset)
    assert init is None  # round 1 starts from the method's own initialisation
    mirrored = flippers["boxes"](extras["boxes"])
    again = build_method(config).initial_labels(mirrored, flippers["box_classes"](extras["box_classes"]), (32, 32))
    assert torch.equal(again, extras["targets"].flip(-1))


def test_a_later_round_trains_on_the_previous_rounds_labels_from_its_weights(tmp_path, capsys, monkeypatch):
    from python_models.methods.simple_does_it import SimpleDoesIt
    from wsss_app.pipeline.runs import load_checkpoint
    from wsss_app.pipeline.train_loop import resized_images

    voc = _voc_with_boxes(tmp_path / "voc")
    common = ["train", "--data", str(voc), "--split", "train", "--image-size", "32", "--batch-size", "4",
              "--epochs", "1", "--no-progress", "--method", "simple_does_it"]
    assert cli.main([*common, "--out", str(tmp_path / "r1"), "--backbone", "tiny"]) == 0
    capsys.readouterr()
    first, _ = load_run(tmp_path / "r1")
    started, seen = [], []
    original = SimpleDoesIt.losses

    def spy(self, batch, step=0):
        if not started:  # the weights it starts from, before its first step
            started.append({k: v.clone() for k, v in self.state_dict().items()})
        seen.append(batch["targets"].clone())
        return original(self, batch, step)

    monkeypatch.setattr(SimpleDoesIt, "losses", spy)
    assert cli.main([*common, "--out", str(tmp_path / "r2"), "--previous-round", str(tmp_path / "r1")]) == 0
    out = capsys.readouterr().out
    n_images = len(open_dataset(voc, "train"))
    assert f"round 2 targets of {n_images} images from the previous round {(tmp_path / 'r1').resolve()}" in out
    _, config = load_run(tmp_path / "r2")
    assert config["round"] == 2 and config["overrides"]["backbone"] == "tiny"
    assert all(torch.equal(started[0][k], v) for k, v in first.state_dict().items())
    # Its targets: round 1's network's pseudo_labels of the boxes (possibly mirrored with the image).
    dataset = open_dataset(voc, "train")
    boxes, classes = dataset.boxes(32)
    images = resized_images(dataset, 32)
    pixels = torch.stack([images[i][1] for i in range(len(images))])
    expected = first.pseudo_labels(pixels, dataset.tags(), boxes, classes)
    for targets in torch.cat(seen):
        assert any(torch.equal(targets, e) or torch.equal(targets, e.flip(-1)) for e in expected)
    # Resuming keeps its previous round; another one is refused; --previous-round fits only simple_does_it.
    assert cli.main(["train", "--out", str(tmp_path / "r2"), "--resume", "--previous-round", str(voc),
                     "--no-progress"]) == 2
    assert "--resume: the run's previous round is" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "r2")["epoch"] == 1


def test_a_previous_round_that_does_not_fit_is_refused(tmp_path, capsys):
    voc = _voc_with_boxes(tmp_path / "voc")
    cam = tmp_path / "cam"
    assert cli.main(["train", "--data", str(voc), "--split", "train", "--out", str(cam), "--method", "cam",
                     "--backbone", "tiny", "--image-size", "32", "--batch-size", "4", "--epochs", "1",
                     "--no-progress"]) == 0
    capsys.readouterr()
    base = ["train", "--data", str(voc), "--split", "train", "--out", str(tmp_path / "run"), "--no-progress"]
    assert cli.main([*base, "--method", "simple_does_it", "--previous-round", str(cam)]) == 2
    assert f"--previous-round {cam} is a cam run, not simple_does_it" in capsys.readouterr().err
    assert cli.main([*base, "--method", "cam", "--previous-round", str(cam)]) == 2
    assert "--previous-round is for ['simple_does_it']'s later rounds, not 'cam'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.json").exists()
