"""Bad files and interrupted runs: wsss_ext.io's readers and writers, and the
refine / evaluate commands on them (issue 21, the CLI part). Every bad file is
refused by name, never with a traceback, and an interrupted write leaves no
temporary file behind."""

import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_app import cli
from wsss_app.pipeline import files, make_dataset
from wsss_app.pipeline.files import evaluate_folders, refine_folder
from wsss_ext.io import (
    MAX_CAM_CLASSES,
    BadFileError,
    atomic_write,
    open_image,
    prepare_output_dir,
    read_array,
    read_cam,
    read_image,
    read_label_map,
    write_array,
    write_label_map,
)

# --- bad files, made by hand -------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width=100_000, height=100_000) -> bytes:
    """A PNG whose IHDR declares width x height RGB pixels and holds none: what a
    decompression bomb's header looks like, in 60 bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b""))
            + _png_chunk(b"IEND", b""))


def npy_bytes(array, allow_pickle=False) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_header_only(shape, descr="<f4") -> bytes:
    """The header of a .npy file declaring ``shape``, without its data."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


GOOD_CAM = np.random.default_rng(0).random((3, 5, 6)).astype(np.float32)

# name -> (file contents, a phrase the reason must hold)
BAD_CAMS = {
    "empty.npy": (b"", "empty file"),
    "truncated.npy": (npy_bytes(GOOD_CAM)[:-7], "truncated"),
    "header_only.npy": (npy_header_only((3, 5000, 5000)), "truncated"),  # 300 MB declared, never allocated
    "cut_header.npy": (npy_bytes(GOOD_CAM)[:20], "not a .npy"),
    "raw_pickle.npy": (pickle.dumps({"cam": [1, 2]}), "not a .npy"),
    "objects.npy": (npy_bytes(np.array([[[1.0, "a"]]], dtype=object), allow_pickle=True), "Python objects"),
    "complex.npy": (npy_bytes(np.ones((2, 3, 3), np.complex64)), "dtype complex64"),
    "bool.npy": (npy_bytes(np.ones((2, 3, 3), bool)), "dtype bool"),
    "rank2.npy": (npy_bytes(np.ones((5, 6), np.float32)), "3-d array"),
    "zero_side.npy": (npy_bytes(np.ones((3, 0, 6), np.float32)), "zero-size side"),
    "no_class.npy": (npy_bytes(np.ones((0, 5, 6), np.float32)), f"1 to {MAX_CAM_CLASSES}"),
    "300_classes.npy": (npy_bytes(np.ones((300, 2, 2), np.float32)), f"1 to {MAX_CAM_CLASSES}"),
    "nan.npy": (npy_bytes(np.full((2, 3, 3), np.nan, np.float32)), "finite, non-negative"),
    "negative.npy": (npy_bytes(-GOOD_CAM), "finite, non-negative"),
}


def _grey_png_bytes(size=(6, 5)) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.full(size, 7, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_IMAGES = {
    "bomb.png": (bomb_png(), "10,000,000,000 pixels"),
    # Between MAX_IMAGE_PIXELS and twice it Pillow only warns; here it is refused too.
    "big.png": (bomb_png(10_000, 10_000), "100,000,000 pixels"),
    "empty.png": (b"", "empty file"),
    "truncated.png": (_grey_png_bytes((200, 200))[:-40], "cannot read"),
    "garbage.jpg": (b"this is not an image at all", "cannot read"),
}


# --- wsss_ext.io: readers ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BAD_CAMS))
def test_read_cam_refuses_a_bad_file_by_name(tmp_path, name):
    contents, phrase = BAD_CAMS[name]
    (tmp_path / name).write_bytes(contents)
    with pytest.raises(BadFileError, match=phrase) as caught:
        read_cam(tmp_path / name)
    assert str(caught.value).startswith(f"{tmp_path / name}: ") and caught.value.path.name == name


def test_read_cam_returns_the_saved_values_as_float32(tmp_path):
    write_array(tmp_path / "cam.npy", GOOD_CAM.astype(np.float64))
    cam = read_cam(tmp_path / "cam.npy")
    assert cam.dtype == np.float32 and np.array_equal(cam, GOOD_CAM)
    np.save(tmp_path / "ints.npy", np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    assert read_cam(tmp_path / "ints.npy")[1, 2, 3] == 23.0


def _decoded_size(path):
    with open_image(path) as image:
        image.load()
        return image.size


def test_read_array_checks_a_huge_declared_shape_without_overflow_or_allocation(tmp_path):
    # 2**62 x 2**62 float32: the product wraps around in int64; the file holds no data at all.
    (tmp_path / "huge.npy").write_bytes(npy_header_only((2**62, 2**62)))
    with pytest.raises(BadFileError, match="truncated: .*85,070,591,730,234,615,865,843,651,857,942,052,864 bytes"):
        read_array(tmp_path / "huge.npy")
    np.save(tmp_path / "ints.npy", np.arange(6).reshape(2, 3))
    assert read_array(tmp_path / "ints.npy").tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(BadFileError, match="expected a 3-d array"):
        read_array(tmp_path / "ints.npy", ndim=3)


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
@pytest.mark.parametrize("reader", [read_image, read_label_map, _decoded_size])
def test_image_readers_refuse_a_bad_file_by_name(tmp_path, name, reader):
    contents, phrase = BAD_IMAGES[name]
    (tmp_path / name).write_bytes(contents)
    with pytest.raises(BadFileError, match=phrase) as caught:
        reader(tmp_path / name)
    assert str(caught.value).startswith(f"{tmp_path / name}: ")


def test_bad_file_error_survives_pickling(tmp_path):
    # torch.distributed gathers the ranks' results as pickles.
    error = pickle.loads(pickle.dumps(BadFileError(tmp_path / "a.npy", "truncated")))
    assert isinstance(error, ValueError) and error.path == tmp_path / "a.npy" and error.reason == "truncated"


# --- wsss_ext.io: writers ----------------------------------------------------------------------------


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "mask.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="encoder died"), atomic_write(target) as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".tmp-")
        temporary.write_bytes(b"half")
        raise RuntimeError("encoder died")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["mask.png"]
    with pytest.raises(ValueError, match="Python objects"):
        write_array(tmp_path / "objects.npy", np.array([None, 1], dtype=object))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png"]


def test_written_files_get_the_umask_mode_not_mkstemp_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        write_label_map(np.zeros((2, 2), np.int64), tmp_path / "mask.png")
        write_array(tmp_path / "cam.npy", GOOD_CAM)
    finally:
        os.umask(previous)
    assert (tmp_path / "mask.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "cam.npy").stat().st_mode & 0o777 == 0o644


# Run from elsewhere than the repository, whose wsss_ext/ source folder would shadow the installed package.
_CHILD_OPTIONS = {"cwd": "/", "env": {**os.environ, "OMP_NUM_THREADS": "1"}}

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from wsss_ext.io import atomic_write

    target = Path(sys.argv[1])
    try:
        with atomic_write(target) as temporary:
            with open(temporary, "wb") as handle:
                handle.write(b"new, half written")
                handle.flush()
                print("in flight", flush=True)
                for _ in range(300):  # a slow writer: 30 s unless interrupted
                    time.sleep(0.1)
                    handle.write(b".")
    except KeyboardInterrupt:
        sys.exit(130)
""")


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
def test_a_signal_mid_write_leaves_no_temporary_file_and_exits_cleanly(tmp_path, signum, status):
    target = tmp_path / "mask.png"
    target.write_bytes(b"old")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(target)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, **_CHILD_OPTIONS)
    try:
        assert child.stdout.readline().strip() == "in flight"
        assert len(list(tmp_path.glob(".tmp-*"))) == 1  # the write is under way
        child.send_signal(signum)
        _, errors = child.communicate(timeout=20)
    finally:
        child.kill()
    assert child.returncode == status and "Traceback" not in errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png"] and target.read_bytes() == b"old"


LOOPING_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from wsss_ext.io import write_label_map

    labels = np.random.default_rng(0).integers(0, 21, (1500, 1500))
    write_label_map(labels, sys.argv[1])
    print("ready", flush=True)
    while True:
        write_label_map(labels, sys.argv[1])
""")


def test_sigterm_during_repeated_label_map_writes_leaves_a_whole_mask_and_no_temporary(tmp_path):
    target = tmp_path / "mask.png"
    child = subprocess.Popen([sys.executable, "-c", LOOPING_CHILD, str(target)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, **_CHILD_OPTIONS)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        child.send_signal(signal.SIGTERM)
        _, errors = child.communicate(timeout=20)
    finally:
        child.kill()
    # Mid-write (most of the loop's time) the guard exits with 143; between writes SIGTERM's default applies.
    assert child.returncode in (128 + signal.SIGTERM, -signal.SIGTERM) and "Traceback" not in errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png"]
    expected = np.random.default_rng(0).integers(0, 21, (1500, 1500))
    assert np.array_equal(read_label_map(target), expected)


def test_prepare_output_dir_refuses_a_file_and_a_read_only_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out .*file: exists and is not a folder"):
        prepare_output_dir(tmp_path / "file")
    with pytest.raises(ValueError, match="--out .*cannot write"):
        prepare_output_dir(tmp_path / "file" / "below")
    assert prepare_output_dir(tmp_path / "new" / "folder").is_dir()
    assert sorted(p.name for p in (tmp_path / "new" / "folder").iterdir()) == []  # the probe is gone


# --- refine --------------------------------------------------------------------------------------------


def _good_folder(root, n=3, size=40):
    """Images and perfect CAMs (at a quarter of the size) of the synthetic dataset."""
    data = make_dataset(n, size, seed=5)
    images, cams = root / "images", root / "cams"
    images.mkdir()
    cams.mkdir()
    stems = [f"good{i}" for i in range(n)]
    for i, stem in enumerate(stems):
        Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(images / f"{stem}.png")
        cam = (data.masks[i][None] == torch.arange(1, 5)[:, None, None]).float()
        np.save(cams / f"{stem}.npy", torch.nn.functional.avg_pool2d(cam[None], 4)[0].numpy())
    return data, images, cams, stems


def _refine(images, cams, out, *extra):
    return cli.main(["refine", "--images", str(images), "--cams", str(cams), "--out", str(out), "--chain",
                     "pamr,crf", "--no-progress", *extra])


def test_refine_skips_every_bad_file_by_name_and_keeps_the_good_ones_of_its_batch(tmp_path, capsys):
    data, images, cams, stems = _good_folder(tmp_path)
    good_image = (images / "good0.png").read_bytes()
    # Bad CAMs beside good images; and bad images beside good CAMs. All sort between the good files,
    # so they fall in the good files' batch of 8.
    for name, (contents, _) in BAD_CAMS.items():
        stem = f"good1_{name[:-4]}"
        (images / f"{stem}.png").write_bytes(good_image)
        (cams / f"{stem}.npy").write_bytes(contents)
    for name, (contents, _) in BAD_IMAGES.items():
        stem = f"good1_img_{name.replace('.', '_')}"
        (images / f"{stem}{os.path.splitext(name)[1]}").write_bytes(contents)
        np.save(cams / f"{stem}.npy", GOOD_CAM)
    out = tmp_path / "out"
    assert _refine(images, cams, out, "--batch-size", "8", "--overlays") == 0
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == [f"{stem}.png" for stem in stems]
    assert sorted(p.name for p in (out / "overlays").glob("*.png")) == written
    assert not list(out.rglob(".tmp-*"))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and f"wrote {len(stems)} masks" in captured.out
    for name, (_, phrase) in BAD_CAMS.items():
        assert any(line.startswith(f"skipped good1_{name}: ") and phrase in line for line in captured.err.splitlines())
    for name, (_, phrase) in BAD_IMAGES.items():
        bad = f"good1_img_{name.replace('.', '_')}{os.path.splitext(name)[1]}"
        assert any(line.startswith(f"skipped {bad}: ") and phrase in line for line in captured.err.splitlines())
    for i, stem in enumerate(stems):  # the good files' masks are right
        truth, predicted = data.masks[i].numpy(), read_label_map(out / f"{stem}.png")
        assert (predicted[truth != 255] == truth[truth != 255]).mean() > 0.9


def test_a_batch_the_chain_refuses_is_refined_image_by_image(tmp_path, monkeypatch):
    data, images, cams, _ = _good_folder(tmp_path)
    real_refine = files.refine

    def refuses_good1(images_batch, cams_batch, **kwargs):
        # good1's image is the only one whose first pixel is this colour.
        marked = (images_batch[:, :, 0, 0] == torch.from_numpy(read_image(tmp_path / "images" / "good1.png"))
                  [0, 0][None, :]).all(1)
        if bool(marked.any()):
            raise ValueError("chain refuses this image")
        return real_refine(images_batch, cams_batch, **kwargs)

    assert len({tuple(data.images[i, :, 0, 0].tolist()) for i in range(3)}) == 3
    monkeypatch.setattr(files, "refine", refuses_good1)
    summary = refine_folder(images, cams, tmp_path / "out", chain="cam", batch_size=8)
    assert summary.written == ["good0.png", "good2.png"]
    assert summary.skipped == {"good1.npy": "the chain refused it (chain refuses this image)"}


def test_refine_refuses_an_out_that_is_a_file_before_any_work(tmp_path, capsys):
    _, images, cams, _ = _good_folder(tmp_path, n=1)
    out = tmp_path / "out.png"
    out.write_bytes(b"not a folder")
    assert _refine(images, cams, out) == 2
    errors = capsys.readouterr().err
    assert errors == f"wsss-ext refine: --out {out}: exists and is not a folder\n"
    assert out.read_bytes() == b"not a folder"


def _cannot_create_files_in(folder) -> bool:
    try:
        os.close(os.open(folder / ".probe-of-the-test", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except OSError:
        return True
    (folder / ".probe-of-the-test").unlink()
    return False


def test_refine_refuses_a_read_only_out_before_any_work(tmp_path, capsys):
    _, images, cams, _ = _good_folder(tmp_path, n=1)
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):  # root ignores the mode: try sysfs, read-only even to root
            out = Path("/sys")
            if not out.is_dir() or not _cannot_create_files_in(out):
                pytest.skip("chmod does not stop this user (root) from writing, and /sys is writable")
        before = sorted(out.iterdir())
        assert _refine(images, cams, out) == 2
        errors = capsys.readouterr().err
        assert errors.startswith(f"wsss-ext refine: --out {out}: cannot write files in it") and errors.count("\n") == 1
        assert sorted(out.iterdir()) == before
    finally:
        (tmp_path / "read_only").chmod(0o755)


def test_refine_names_a_missing_input_folder(tmp_path, capsys):
    _, images, _, _ = _good_folder(tmp_path, n=1)
    assert _refine(images, tmp_path / "nowhere", tmp_path / "out") == 2
    assert capsys.readouterr().err == f"wsss-ext refine: --cams {tmp_path / 'nowhere'}: no such folder\n"


# --- evaluate ------------------------------------------------------------------------------------------


def _masks(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    write_label_map(np.array([[0, 1], [1, 2]]), pred / "a.png")
    write_label_map(np.array([[0, 1], [2, 2]]), gt / "a.png")
    return pred, gt


def test_evaluate_reports_a_decompression_bomb_by_name(tmp_path, capsys):
    pred, gt = _masks(tmp_path)
    (pred / "b.png").write_bytes(bomb_png())
    write_label_map(np.zeros((2, 2)), gt / "b.png")
    assert cli.main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"wsss-ext evaluate: {pred / 'b.png'}: its header declares 10,000,000,000 pixels")


@pytest.mark.parametrize("n_classes", ["-1", "0", "257", "1000000"])
def test_evaluate_refuses_an_n_classes_outside_1_to_256(tmp_path, capsys, n_classes):
    pred, gt = _masks(tmp_path)
    assert cli.main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--n-classes", n_classes]) == 2
    assert capsys.readouterr().err == (f"wsss-ext evaluate: --n-classes must be between 1 and 256 (label maps are "
                                       f"uint8 PNGs, labels 0 to 255), got {n_classes}\n")
    with pytest.raises(ValueError, match="n_classes must be between 1 and 256"):
        evaluate_folders(pred, gt, n_classes=int(n_classes))


def test_evaluate_names_a_label_map_with_labels_past_n_classes(tmp_path):
    pred, gt = _masks(tmp_path)
    assert evaluate_folders(pred, gt, n_classes=256)["confusion_matrix"][2][:3] == [0, 1, 1]
    assert evaluate_folders(pred, gt)["n_classes"] == 3
    with pytest.raises(ValueError, match=r"a\.png against .*gt.*a\.png: .*outside \[0, 2\)"):
        evaluate_folders(pred, gt, n_classes=2)
    Image.fromarray(np.array([[0, 300], [1, 2]], np.uint16)).save(gt / "a.png")  # a 16-bit grey PNG
    assert read_label_map(gt / "a.png")[0, 1] == 300
    with pytest.raises(ValueError, match=r"a\.png against .*: target holds labels outside \[0, 256\)"):
        evaluate_folders(pred, gt)
