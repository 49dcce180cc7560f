"""open_dataset: the PASCAL VOC layout, a tags.csv folder, the synthetic set;
bad entries reported by name and skipped, a folder of neither layout refused."""

import numpy as np
import pytest
import torch
from app_support import VOC_INDEX, VOC_STAND_INS, make_tags_folder, make_voc_folder, synthetic

from wsss_app.pipeline.datasets import VOC_CLASSES, open_dataset
from wsss_app.pipeline.synthetic import CLASS_NAMES


def test_voc_layout_tags_from_the_annotations_and_masks_in_voc_numbering(tmp_path):
    root = make_voc_folder(tmp_path / "voc", n=6)
    _, tags, masks = synthetic(6)
    train = open_dataset(root)  # no train_aug.txt: the default split is train
    assert train.layout == "voc" and train.split == "train" and train.classes == VOC_CLASSES
    assert [s.name for s in train.samples] == [f"2007_{i:06d}" for i in range(4)]
    for row, names in zip(train.tags(), tags):
        expected = {VOC_CLASSES.index(VOC_STAND_INS[CLASS_NAMES.index(n) - 1]) for n in names}
        assert set(row.nonzero().flatten().tolist()) == expected  # the <part><name>hand</name> is no tag
    assert np.array_equal(train.read_mask(0), masks[0]) and VOC_INDEX["aeroplane"] == 1
    assert train.read_image(0).shape == (32, 32, 3)
    assert len(open_dataset(root, "val")) == 2 and not train.skipped
    (root / "ImageSets/Segmentation/train_aug.txt").write_text("2007_000001\n2007_000002\n")
    assert open_dataset(root).split == "train_aug" and len(open_dataset(root)) == 2
    with pytest.raises(ValueError, match=r"no image list ImageSets/Segmentation/test.txt; the lists are \['train'"):
        open_dataset(root, "test")


def test_voc_bad_entries_are_reported_by_name_and_skipped(tmp_path):
    root = make_voc_folder(tmp_path / "voc", n=6, splits={"train": range(6)})
    (root / "JPEGImages/2007_000000.jpg").unlink()
    (root / "Annotations/2007_000001.xml").write_text("<annotation><object>")
    (root / "Annotations/2007_000002.xml").write_text("<annotation><object><name>zebra</name></object></annotation>")
    (root / "JPEGImages/2007_000003.jpg").write_bytes(b"not a jpeg at all")
    dataset = open_dataset(root)
    assert [s.name for s in dataset.samples] == ["2007_000004", "2007_000005"]
    assert "JPEGImages/2007_000000.jpg is missing" in dataset.skipped["2007_000000"]
    assert "not valid XML" in dataset.skipped["2007_000001.jpg"]
    assert "zebra" in dataset.skipped["2007_000002.jpg"] and dataset.unknown_classes == {"zebra": ["2007_000002.jpg"]}
    assert "cannot read the image" in dataset.skipped["2007_000003.jpg"]


def test_tags_folder_separators_header_and_class_list(tmp_path):
    root = make_tags_folder(tmp_path / "mine", n=5, separator=";")
    _, tags, _ = synthetic(5)
    dataset = open_dataset(root)
    assert dataset.layout == "tags" and dataset.classes == tuple(sorted(CLASS_NAMES[1:]))
    for sample, names in zip(dataset.samples, tags):
        assert [dataset.classes[c] for c in sample.tags] == sorted(names)
    assert all(sample.mask is not None for sample in dataset.samples)
    # names with a space, separated by ';'; spaces alone separate otherwise; classes.txt fixes the order
    (root / "tags.csv").write_text("img0.png,potted plant;dogs\nimg1.png,dogs  cats\n")
    (root / "classes.txt").write_text("dogs\ncats\npotted plant\n")
    dataset = open_dataset(root)
    assert dataset.classes == ("dogs", "cats", "potted plant")
    assert dataset.tags().tolist() == [[1, 0, 1], [1, 1, 0]]
    assert dataset.skipped == {f"img{i}.png": "not listed in tags.csv" for i in (2, 3, 4)}
    with pytest.raises(ValueError, match="has no splits"):
        open_dataset(root, "train")


def test_tags_folder_bad_rows_are_reported_by_name_and_skipped(tmp_path):
    root = make_tags_folder(tmp_path / "mine", n=4)
    (root / "img1.png").write_bytes(b"")
    (root / "img2.png").write_bytes(b"\x89PNG garbage")
    (root / "classes.txt").write_text("\n".join(sorted(CLASS_NAMES[1:])) + "\n")
    rows = (root / "tags.csv").read_text().splitlines()
    rows[4] = "img3.png,stripes zebra"
    (root / "tags.csv").write_text("\n".join(rows + ["gone.png,dots", "img0.png,dots"]) + "\n")
    dataset = open_dataset(root)
    assert [s.name for s in dataset.samples] == ["img0"]
    assert set(dataset.skipped) == {"img0.png", "img1.png", "img2.png", "img3.png", "gone.png"}
    assert "listed twice" in dataset.skipped["img0.png"]  # the first row counts
    assert dataset.skipped["img1.png"] == "empty file (0 bytes)"
    assert "cannot read the image" in dataset.skipped["img2.png"]
    assert "'zebra'" in dataset.skipped["img3.png"] and "no such image" in dataset.skipped["gone.png"]
    assert dataset.unknown_classes == {"zebra": ["img3.png"]}


def test_synthetic_and_plain_image_folders(tmp_path):
    dataset = open_dataset("synthetic", "val")
    assert dataset.classes == CLASS_NAMES[1:] and len(dataset) == 32
    for index in range(4):
        present = set(np.unique(dataset.read_mask(index)).tolist()) - {0, 255}
        assert present == {c + 1 for c in dataset.samples[index].tags}
    with pytest.raises(ValueError, match="splits"):
        open_dataset("synthetic", "test")
    root = make_tags_folder(tmp_path / "plain", n=3)
    (root / "tags.csv").unlink()
    plain = open_dataset(root, classes=["a", "b"], tags_required=False)
    assert plain.layout == "images" and torch.equal(plain.tags(), torch.ones(3, 2))


def test_a_folder_of_neither_layout_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"not a dataset: looked for the PASCAL VOC layout \(JPEGImages/ and "
                                         r"ImageSets/Segmentation/\*.txt\) or a folder of images with tags.csv"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        open_dataset(tmp_path / "file.txt")
    root = make_tags_folder(tmp_path / "mine", n=2)
    for path in root.glob("img*.png"):
        path.write_bytes(b"broken")
    with pytest.raises(ValueError, match="holds no usable image"):
        open_dataset(root)
