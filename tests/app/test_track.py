"""``wsss-ext track`` end to end on a tiny synthetic clip written to disk, its
bad input, and ``wsss-ext demo --task video --preset tiny``."""

import json
import re
import zlib
import struct

import numpy as np
import pytest
import torch
from PIL import Image

import python_models
from wsss_app import cli
from wsss_ext.io import VOC_PALETTE, read_label_map, write_label_map
from wsss_ext.metrics import davis_scores, davis_summary
from wsss_app.pipeline.synthetic_video import make_videos
from wsss_app.pipeline.tracking import load_video_method, read_first_mask, save_checkpoint, track_frames
from wsss_app.pipeline.video_demo import PRESETS

SIZE, FRAMES = 32, 5


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_clip(root, size=SIZE, frames=FRAMES, seed=3):
    """root/frames/0000t.png, root/gt/0000t.png; returns (frames T x H x W x 3, masks T x H x W)."""
    video = make_videos(1, frames, size, seed=seed, min_visible=10)
    images, masks = video.frames[0].permute(0, 2, 3, 1).numpy(), video.masks[0].numpy()
    for t, (image, mask) in enumerate(zip(images, masks)):
        (root / "frames").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "frames" / f"{t:05d}.png")
        write_label_map(mask, root / "gt" / f"{t:05d}.png")
    return images, masks


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = python_models.create("mast", backbone="tiny")
    path = tmp_path_factory.mktemp("checkpoint") / "mast.pt"
    save_checkpoint(path, "mast", {"backbone": "tiny"}, model)
    return path


def track(root, *extra):
    return cli.main(["track", "--frames", str(root / "frames"), "--first-mask", str(root / "gt" / "00000.png"),
                     "--out", str(root / "out"), "--no-progress", *extra])


def written(root):
    return sorted(p.name for p in (root / "out").glob("*.png")) if (root / "out").exists() else []


# --- end to end --------------------------------------------------------------------------------------------


def test_track_writes_what_the_method_propagates_and_scores_it(tmp_path, checkpoint, capsys):
    images, masks = write_clip(tmp_path)
    assert track(tmp_path, "--checkpoint", str(checkpoint), "--gt", str(tmp_path / "gt")) == 0
    out = capsys.readouterr().out
    assert written(tmp_path) == [f"{t:05d}.png" for t in range(FRAMES)]
    assert "UNTRAINED" not in out and "weights from" in out
    ours = np.stack([read_label_map(tmp_path / "out" / f"{t:05d}.png") for t in range(FRAMES)])
    # The files hold exactly the method's propagation of the first mask ...
    model, key, trained = load_video_method(None, checkpoint)
    assert (key, trained) == ("mast", True)
    expected = track_frames(model, images, masks[0]).numpy()
    assert np.array_equal(ours, expected)
    assert np.array_equal(ours[0], masks[0]) and set(np.unique(ours)) <= set(np.unique(masks[0]))
    # ... as VOC-palette PNGs, written atomically (no temporary left behind).
    with Image.open(tmp_path / "out" / "00001.png") as image:
        assert image.mode == "P" and image.getpalette()[3:6] == VOC_PALETTE[1].tolist()
    assert not list((tmp_path / "out").glob(".tmp-*"))
    # The printed J&F is DAVIS's on the written masks, frames 1 .. T-2.
    summary = davis_summary([davis_scores(torch.from_numpy(ours), torch.from_numpy(masks))])
    printed = re.search(r"J&F ([\d.]+)  J ([\d.]+)  F ([\d.]+)", out)
    assert printed, out
    assert [float(v) for v in printed.groups()] == pytest.approx(
        [100 * summary["J&F"], 100 * summary["J"], 100 * summary["F"]], abs=0.06)
    assert f"{int(masks[0].max())} objects, {FRAMES - 2} frames scored" in out


def test_track_without_checkpoint_says_the_network_is_untrained(tmp_path, capsys):
    write_clip(tmp_path, frames=3)
    assert track(tmp_path, "--method", "mast") == 0
    assert "UNTRAINED" in capsys.readouterr().out
    assert len(written(tmp_path)) == 3


def test_track_pads_sides_that_are_not_multiples_of_the_stride(tmp_path, checkpoint):
    images, masks = write_clip(tmp_path, size=30, frames=3)
    assert track(tmp_path, "--checkpoint", str(checkpoint)) == 0
    out = read_label_map(tmp_path / "out" / "00002.png")
    assert out.shape == (30, 30) and np.array_equal(read_label_map(tmp_path / "out" / "00000.png"), masks[0])


def test_an_unreadable_frame_is_skipped_by_name(tmp_path, checkpoint, capsys):
    write_clip(tmp_path)
    (tmp_path / "frames" / "00002.png").write_bytes(b"not a png at all")
    assert track(tmp_path, "--checkpoint", str(checkpoint), "--gt", str(tmp_path / "gt")) == 0
    captured = capsys.readouterr()
    assert "skipped 00002.png" in captured.err
    assert written(tmp_path) == ["00000.png", "00001.png", "00003.png", "00004.png"]


def test_first_mask_in_voc_colours_reads_as_labels(tmp_path):
    labels = np.array([[0, 1, 2], [15, 1, 0]])
    Image.fromarray(VOC_PALETTE[labels]).save(tmp_path / "rgb.png")
    assert np.array_equal(read_first_mask(tmp_path / "rgb.png", (2, 3)), labels)
    write_label_map(np.array([[0, 255], [1, 1]]), tmp_path / "void.png")
    assert read_first_mask(tmp_path / "void.png").tolist() == [[0, 0], [1, 1]]  # VOC's void is background


# --- bad input ------------------------------------------------------------------------------------------------


def test_frames_of_different_sizes_are_an_error_naming_the_file(tmp_path, checkpoint, capsys):
    write_clip(tmp_path)
    Image.fromarray(np.zeros((SIZE, SIZE + 4, 3), np.uint8)).save(tmp_path / "frames" / "00003.png")
    assert track(tmp_path, "--checkpoint", str(checkpoint)) == 2
    err = capsys.readouterr().err
    assert "00003.png is 36 x 32 but 00000.png is 32 x 32" in err
    assert written(tmp_path) == []  # checked before anything is written


def _short_palette_png(path, labels, colours):
    """A palette PNG written by hand: 8-bit indices, a PLTE of len(colours) entries."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    height, width = labels.shape
    rows = b"".join(b"\x00" + row.astype(np.uint8).tobytes() for row in labels)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
                     + chunk(b"PLTE", bytes(np.asarray(colours, np.uint8).reshape(-1)))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_a_mask_with_labels_the_palette_lacks_is_an_error(tmp_path, checkpoint, capsys):
    _, masks = write_clip(tmp_path)
    labels = masks[0].copy()
    labels[:2, :2] = 7
    _short_palette_png(tmp_path / "gt" / "00000.png", labels, VOC_PALETTE[:4])  # indices 0..3 only
    assert track(tmp_path, "--checkpoint", str(checkpoint)) == 2
    assert "holds label 7 but its palette has only 4 colours" in capsys.readouterr().err
    colours = VOC_PALETTE[masks[0]].copy()
    colours[0, 0] = (1, 2, 3)  # no VOC label has this colour
    Image.fromarray(colours).save(tmp_path / "gt" / "00000.png")
    assert track(tmp_path, "--checkpoint", str(checkpoint)) == 2
    assert "colours the VOC palette lacks (RGB (1, 2, 3) at 1 pixels)" in capsys.readouterr().err
    assert written(tmp_path) == []


def test_other_bad_input_is_a_clear_error(tmp_path, checkpoint, capsys):
    (tmp_path / "frames").mkdir()
    (tmp_path / "gt").mkdir()
    write_label_map(np.ones((SIZE, SIZE), np.int64), tmp_path / "gt" / "00000.png")
    (tmp_path / "frames" / "notes.txt").write_text("not a frame")
    assert track(tmp_path) == 2
    assert "no frames in it" in capsys.readouterr().err

    write_clip(tmp_path)
    write_label_map(np.ones((SIZE, SIZE + 1), np.int64), tmp_path / "bigger.png")
    assert cli.main(["track", "--frames", str(tmp_path / "frames"), "--first-mask", str(tmp_path / "bigger.png"),
                     "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "is 33 x 32 but the frames are 32 x 32" in capsys.readouterr().err
    write_label_map(np.zeros((SIZE, SIZE), np.int64), tmp_path / "empty.png")
    assert cli.main(["track", "--frames", str(tmp_path / "frames"), "--first-mask", str(tmp_path / "empty.png"),
                     "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "no object in it" in capsys.readouterr().err
    assert track(tmp_path, "--checkpoint", str(checkpoint), "--method", "corrflow") == 2
    assert "--method corrflow but the checkpoint" in capsys.readouterr().err
    assert track(tmp_path, "--method", "cam") == 2
    assert "cam is not a video method" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert track(tmp_path, "--checkpoint", str(tmp_path / "junk.pt")) == 2
    assert "cannot read it" in capsys.readouterr().err
    (tmp_path / "frames" / "00000.png").write_bytes(b"")
    assert track(tmp_path, "--checkpoint", str(checkpoint)) == 2
    assert "the first frame 00000.png (the one --first-mask annotates) cannot be read" in capsys.readouterr().err
    assert written(tmp_path) == []


# --- the video demo --------------------------------------------------------------------------------------------


def test_video_demo_tiny_preset(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--task", "video", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "figure.png", "checkpoint.pt"}
    report = json.loads((out / "report.json").read_text())
    config = PRESETS["tiny"]
    assert set(report["results"]) == {"trained", "untrained", "copy_first_mask"}
    assert len(report["training_loss"]) == config.steps and all(np.isfinite(report["training_loss"]))
    # The copy baseline, recomputed from the validation videos the demo draws.
    val = make_videos(config.n_val, config.val_frames, config.size, seed=config.seed + 10_000)
    copy = davis_summary([davis_scores(m[:1].expand_as(m).contiguous(), m) for m in val.masks])
    assert report["results"]["copy_first_mask"]["J&F"] == pytest.approx(100 * copy["J&F"])
    assert report["gain_over_copy"] == pytest.approx(report["results"]["trained"]["J&F"] - 100 * copy["J&F"])
    for result in report["results"].values():
        assert 0 <= result["J"] <= 100 and 0 <= result["F"] <= 100
    assert "copy the first mask" in (out / "report.md").read_text()
    with Image.open(out / "figure.png") as figure:
        assert figure.size[0] > 100
    # Its checkpoint is what `wsss-ext track --checkpoint` reads.
    model, key, trained = load_video_method(None, out / "checkpoint.pt")
    assert (key, trained) == (config.method, True)
    assert "checkpoint.pt" in capsys.readouterr().out
