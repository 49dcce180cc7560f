"""The main job: synthetic data, metrics, I/O, the refinement chains, and the
demo / refine / evaluate commands (distributed refinement included, with two
gloo processes)."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from wsss_app import cli
from wsss_ext.io import VOC_PALETTE, read_label_map, write_label_map
from wsss_ext.metrics import confusion_matrix, iou_from_confusion, mean_iou
from wsss_app.pipeline import CHAINS, make_dataset, refine
from wsss_app.pipeline.chains import parse_chain
from wsss_app.pipeline.files import evaluate_folders, refine_folder

# --- the synthetic dataset --------------------------------------------------------------------------


def test_dataset_is_deterministic_and_its_masks_match_its_tags():
    first, again, other = make_dataset(12, 48, seed=3), make_dataset(12, 48, seed=3), make_dataset(12, 48, seed=4)
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)
    assert not torch.equal(first.images, other.images)
    assert first.images.dtype == torch.uint8 and first.images.shape == (12, 3, 48, 48)
    for mask, tags in zip(first.masks, first.tags):
        present = set(mask.unique().tolist()) - {0, 255}
        assert present == {c + 1 for c in tags.nonzero().flatten().tolist()}
        assert len(present) >= 1


# --- metrics and I/O ---------------------------------------------------------------------------------


def test_confusion_matrix_and_miou_by_hand():
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 1, 0]])
    confusion = confusion_matrix(pred, target, 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    # IoU: class 0 = 1 / (1 + 1 + 0) ; class 1 = 2 / (2 + 2 + 0) ; class 2 = 0 / (0 + 1 + 0)
    torch.testing.assert_close(iou_from_confusion(confusion), torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    assert mean_iou(confusion) == pytest.approx(1 / 3)
    assert torch.isnan(iou_from_confusion(confusion_matrix(pred, target, 4))[3])  # absent everywhere
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(pred, target, 2)


def test_palette_png_round_trip(tmp_path):
    labels = np.array([[0, 1, 2], [15, 20, 255]], dtype=np.int64)
    write_label_map(labels, tmp_path / "mask.png")
    assert np.array_equal(read_label_map(tmp_path / "mask.png"), labels)
    assert VOC_PALETTE[1].tolist() == [128, 0, 0] and VOC_PALETTE[15].tolist() == [192, 128, 128]
    assert not list(tmp_path.glob(".tmp-*"))


# --- the chains ---------------------------------------------------------------------------------------


def test_chain_names_and_steps():
    assert parse_chain("cam+rw+crf") == ["rw", "crf"] == parse_chain("rw,crf")
    assert parse_chain("cam") == []
    with pytest.raises(ValueError, match="unknown refinement step"):
        parse_chain("pamr,bogus")
    data = make_dataset(2, 32, seed=1)
    cams = (data.masks[:, None] == torch.arange(1, 5)[None, :, None, None]).float()  # perfect CAMs
    for chain in CHAINS:
        labels = refine(data.images, cams, chain)
        assert labels.shape == (2, 32, 32)
    assert torch.equal(refine(data.images, cams, "cam"), torch.where(data.masks == 255, 0, data.masks))


# --- the commands -----------------------------------------------------------------------------------


def _write_folder(root, n=4, size=40):
    from PIL import Image

    data = make_dataset(n, size, seed=5)
    images, cams = root / "images", root / "cams"
    images.mkdir()
    cams.mkdir()
    for i in range(n):
        Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(images / f"img{i}.png")
        cam = (data.masks[i][None] == torch.arange(1, 5)[:, None, None]).float()
        np.save(cams / f"img{i}.npy", torch.nn.functional.avg_pool2d(cam[None], 4)[0].numpy())
    return data, images, cams


def test_refine_reports_bad_files_by_name_and_keeps_the_rest(tmp_path, capsys):
    data, images, cams = _write_folder(tmp_path)
    (images / "broken.jpg").write_bytes(b"not an image")
    np.save(cams / "broken.npy", np.zeros((4, 10, 10), np.float32))
    np.save(cams / "img3.npy", np.zeros((10, 10), np.float32))  # wrong shape
    np.save(cams / "orphan.npy", np.zeros((4, 10, 10), np.float32))
    (images / "lonely.png").write_bytes((images / "img0.png").read_bytes())
    out = tmp_path / "out"
    assert cli.main(["refine", "--images", str(images), "--cams", str(cams), "--out", str(out), "--chain",
                     "pamr,crf", "--overlays", "--no-progress"]) == 0
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["img0.png", "img1.png", "img2.png"]
    assert sorted(p.name for p in (out / "overlays").glob("*.png")) == written
    assert not list(out.rglob(".tmp-*"))
    errors = capsys.readouterr().err
    for name in ("broken.jpg", "img3.npy", "orphan.npy", "lonely.png"):
        assert f"skipped {name}" in errors
    # Good CAMs give good masks.
    for i in range(3):
        predicted = read_label_map(out / f"img{i}.png")
        truth = data.masks[i].numpy()
        keep = truth != 255
        assert (predicted[keep] == truth[keep]).mean() > 0.9


def test_evaluate_on_known_masks(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    write_label_map(np.array([[0, 1], [1, 1]]), pred / "a.png")
    write_label_map(np.array([[0, 1], [0, 255]]), gt / "a.png")
    write_label_map(np.array([[2, 2], [0, 0]]), pred / "b.png")
    write_label_map(np.array([[2, 1], [0, 0]]), gt / "b.png")
    result = evaluate_folders(pred, gt)
    # confusion rows gt, cols pred: [[3, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert result["confusion_matrix"] == [[3, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert result["miou"] == pytest.approx(100 * (3 / 4 + 1 / 3 + 1 / 2) / 3)
    assert cli.main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["miou"] == pytest.approx(result["miou"])
    assert cli.main(["evaluate", "--pred", str(tmp_path), "--gt", str(gt)]) == 2  # no matching names


def _refine_rank(rank, world_size, port, images, cams, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    assert cli.main(["refine", "--images", images, "--cams", cams, "--out", out, "--chain", "crf",
                     "--no-progress"]) == 0


def test_refine_shards_files_over_two_gloo_processes(tmp_path):
    _, images, cams = _write_folder(tmp_path, n=5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "out"
    mp.spawn(_refine_rank, args=(2, port, str(images), str(cams), str(out)), nprocs=2, join=True)
    assert sorted(p.name for p in out.glob("*.png")) == [f"img{i}.png" for i in range(5)]
    single = tmp_path / "single"
    refine_folder(images, cams, single, chain="crf")
    for i in range(5):
        assert np.array_equal(read_label_map(out / f"img{i}.png"), read_label_map(single / f"img{i}.png"))


def test_demo_end_to_end_at_a_tiny_size(tmp_path):
    assert cli.main(["demo", "--preset", "tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["chains"]) == list(CHAINS)
    cam = report["chains"]["cam"]["miou"]
    assert max(result["miou"] for name, result in report["chains"].items() if name != "cam") > cam
    assert (tmp_path / "figure.png").stat().st_size > 10_000 and "cam+rw+crf" in (tmp_path / "report.md").read_text()


def test_methods_command_lists_every_registered_method(capsys):
    from python_models import METHODS

    assert cli.main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["key"] for row in rows] == sorted(METHODS)
    assert {row["key"]: row["kernels"] for row in rows}["cam"] == ["dense_crf"]
