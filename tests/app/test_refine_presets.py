"""``wsss-ext refine``'s settings: the papers' presets, the flags that override
them, the published default on a VOC-sized photo, and the walk's source
(a trained network's, or the image-gradient fallback)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import python_models
import wsss_ext
from python_models.pseudo import psa_random_walk
from wsss_app import cli
from wsss_app.commands import refine as refine_command
from wsss_app.pipeline.chains import PRESETS, ChainSettings, chain_settings, refine
from wsss_app.pipeline.demo import DEMO_SETTINGS
from wsss_app.pipeline.walks import (
    AffinityNetworkWalk,
    BoundaryNetworkWalk,
    ImageGradientWalk,
    walk_of,
)
from wsss_ext.io import read_label_map

PAMR_1STAGE = dict(n_iters=10, dilations=(1, 2, 4, 8, 12, 24), sigma=0.1)
PSA_CRF = dict(n_iters=10, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0,
               bilateral_weight=10.0)
IRN_CRF = dict(PSA_CRF, bilateral_sxy=50.0, bilateral_srgb=5.0)

# The values METHODS.md section 3 and the repositories' scripts give, written out by hand.
PUBLISHED = {
    # psa infer_aff.py: --beta 8 --logt 8 --alpha 16, stride-8 features, radius 5.
    "affinitynet": dict(bg_threshold=0.25, bg_power=16.0, crf=PSA_CRF, pamr=PAMR_1STAGE, rw_stride=8, rw_beta=8.0,
                        rw_steps=256, rw_radius=5, rw_bg_power=16.0),
    # irn run_sample.py: --cam_eval_thres 0.15, --beta 10 --exp_times 8, --sem_seg_bg_thres 0.25; IR-label CRF.
    "irnet": dict(bg_threshold=0.15, bg_power=None, crf=IRN_CRF, pamr=PAMR_1STAGE, rw_stride=4, rw_beta=10.0,
                  rw_steps=256, rw_radius=5, rw_bg_threshold=0.25, rw_bg_power=None),
    # PuzzleCAM README: --threshold 0.35 --crf_iteration 1; IRNet's walk.
    "puzzle_cam": dict(bg_threshold=0.35, bg_power=None, crf=dict(IRN_CRF, n_iters=1), pamr=PAMR_1STAGE,
                       rw_stride=4, rw_beta=10.0, rw_steps=256, rw_radius=5, rw_bg_threshold=0.35, rw_bg_power=None),
    # SEAM infer_SEAM.py: background 0.26; infer_aff.py: --alpha 6 --beta 8 --logt 6.
    "seam": dict(bg_threshold=0.26, bg_power=None, crf=PSA_CRF, pamr=PAMR_1STAGE, rw_stride=8, rw_beta=8.0,
                 rw_steps=64, rw_radius=5, rw_bg_power=6.0),
    # RecurSeed: background (1 - max)^2, CRF gaussian 1/3, bilateral 67/3/4, 10 iterations; PAMR sigma 0.1.
    "recurseed": dict(bg_power=2.0, pamr=PAMR_1STAGE,
                      crf=dict(n_iters=10, gaussian_sxy=1.0, gaussian_weight=3.0, bilateral_sxy=67.0,
                               bilateral_srgb=3.0, bilateral_weight=4.0)),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_preset_holds_the_published_values(name):
    settings = chain_settings(name)
    for field, value in PUBLISHED[name].items():
        assert getattr(settings, field) == value, (name, field)


def test_presets_cover_the_issue_and_the_default_is_published():
    assert sorted(PRESETS) == ["affinitynet", "irnet", "puzzle_cam", "recurseed", "seam"]
    default = ChainSettings()
    assert default.crf == PSA_CRF and default.pamr == PAMR_1STAGE
    assert (default.rw_beta, default.rw_steps, default.rw_radius, default.rw_stride) == (10.0, 256, 5, 4)
    assert default.bg_threshold == 0.25 and default.rw_bg_threshold == 0.25 and default.bg_power is None
    # The demo's 96-pixel images take a bilateral width shrunk with them, and say so explicitly.
    assert DEMO_SETTINGS.crf["bilateral_sxy"] == 20.0 and chain_settings().crf["bilateral_sxy"] == 80.0


def _args(*flags):
    return cli.build_parser().parse_args(["refine", "--images", "i", "--cams", "c", "--out", "o", *flags])


def test_flags_override_the_preset_and_leave_the_rest():
    settings = refine_command.chain_settings_of(_args(
        "--preset", "irnet", "--crf-iters", "3", "--crf-bilateral-sxy", "20", "--crf-bilateral-srgb", "7",
        "--crf-gaussian-sxy", "1.5", "--crf-gaussian-weight", "2", "--crf-bilateral-weight", "4",
        "--pamr-iters", "5", "--pamr-dilations", "1,3", "--walk-beta", "7", "--walk-steps", "32",
        "--walk-radius", "3", "--bg-threshold", "0.4"))
    assert settings.crf == dict(n_iters=3, gaussian_sxy=1.5, gaussian_weight=2.0, bilateral_sxy=20.0,
                                bilateral_srgb=7.0, bilateral_weight=4.0)
    assert settings.pamr == dict(n_iters=5, dilations=(1, 3), sigma=0.1)
    assert (settings.rw_beta, settings.rw_steps, settings.rw_radius, settings.bg_threshold) == (7.0, 32, 3, 0.4)
    assert settings.rw_bg_threshold == 0.25 and settings.rw_stride == 4  # irnet's, untouched
    # No flag: the preset as published; no preset: the published defaults.
    assert refine_command.chain_settings_of(_args("--preset", "seam")) == PRESETS["seam"]
    assert refine_command.chain_settings_of(_args()) == ChainSettings()
    # A threshold given replaces a preset's background power, and the reverse.
    seam = refine_command.chain_settings_of(_args("--preset", "seam", "--walk-bg-threshold", "0.3"))
    assert seam.rw_bg_power is None and seam.rw_bg_threshold == 0.3
    psa = refine_command.chain_settings_of(_args("--preset", "affinitynet", "--bg-threshold", "0.2"))
    assert psa.bg_power is None and psa.bg_threshold == 0.2 and psa.rw_bg_power == 16.0
    assert chain_settings("irnet", bg_power=4.0).bg_power == 4.0


def test_bad_settings_name_the_option():
    with pytest.raises(ValueError, match="unknown preset 'psa'"):
        chain_settings("psa")
    with pytest.raises(ValueError, match="crf_iters=-1"):
        chain_settings(crf_iters=-1)
    with pytest.raises(ValueError, match="crf_bilateral_sxy=0"):
        chain_settings("irnet", crf_bilateral_sxy=0.0)
    with pytest.raises(ValueError, match="pamr_dilations"):
        chain_settings(pamr_dilations=(1, 0))
    with pytest.raises(ValueError, match="not both"):
        chain_settings(bg_threshold=0.2, bg_power=2.0)
    with pytest.raises(TypeError, match="unknown chain option"):
        chain_settings(crf_width=3)
    with pytest.raises(TypeError, match="rw_beta"):
        ChainSettings(rw_beta="ten")
    with pytest.raises(TypeError, match="unknown CRF"):
        ChainSettings(crf=dict(sxy=3))
    with pytest.raises(TypeError, match="settings must be a ChainSettings"):
        refine(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 1, 8, 8), "crf", settings={"crf": {}})


def test_cli_reports_a_bad_flag_in_one_line(tmp_path, capsys):
    (tmp_path / "i").mkdir()
    (tmp_path / "c").mkdir()
    code = cli.main(["refine", "--images", str(tmp_path / "i"), "--cams", str(tmp_path / "c"), "--out",
                     str(tmp_path / "o"), "--walk-steps", "-4", "--no-progress"])
    assert code == 2 and "walk_steps=-4" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _args("--pamr-dilations", "1,two")
    with pytest.raises(SystemExit):
        _args("--preset", "sec")


def _photo():
    """A 375 x 500 photo-sized image: a bright square object on a darker field,
    with a CAM covering the object's centre only (the CAM's typical under-segmentation)."""
    image = np.full((375, 500, 3), 70, dtype=np.uint8)
    image[60:315, 120:375] = (200, 80, 60)
    generator = np.random.default_rng(0)
    image = np.clip(image + generator.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    ys, xs = np.mgrid[0:375, 0:500]
    cam = np.exp(-(((ys - 187) / 100.0) ** 2 + ((xs - 247) / 100.0) ** 2))[None].astype(np.float32)
    truth = np.zeros((375, 500), dtype=np.int64)
    truth[60:315, 120:375] = 1
    return image, cam, truth


def test_refine_defaults_to_the_published_crf_on_a_photo_sized_image(tmp_path):
    from PIL import Image

    image, cam, truth = _photo()
    for folder in ("images", "cams"):
        (tmp_path / folder).mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "photo.png")
    np.save(tmp_path / "cams" / "photo.npy", cam)
    assert cli.main(["refine", "--images", str(tmp_path / "images"), "--cams", str(tmp_path / "cams"),
                     "--out", str(tmp_path / "out"), "--chain", "crf", "--no-progress"]) == 0
    written = read_label_map(tmp_path / "out" / "photo.png")
    images, cams = torch.from_numpy(image).permute(2, 0, 1)[None], torch.from_numpy(cam)[None]
    published = refine(images, cams, "crf", ChainSettings())[0].numpy()
    demo = refine(images, cams, "crf", DEMO_SETTINGS)[0].numpy()
    assert np.array_equal(written, published)
    # The 80-pixel bilateral kernel reaches across the 255-pixel object and fills it; the demo's 20-pixel one,
    # sized for 96-pixel images, leaves its corners to the background (measured: IoU 1.0 against 0.79).
    iou = {name: ((labels == 1) & (truth == 1)).sum() / ((labels == 1) | (truth == 1)).sum()
           for name, labels in (("published", published), ("demo", demo))}
    assert not np.array_equal(published, demo)
    assert iou["published"] > 0.95 > iou["demo"]


def _walk_case():
    generator = torch.Generator().manual_seed(0)
    batch = python_models.create("cam", backbone="tiny", num_classes=3).example_batch(2, 32, generator)
    images = (batch["images"] * 255).round().to(torch.uint8)
    cams = F.avg_pool2d((batch["masks"][:, None] == torch.arange(1, 4)[None, :, None, None]).float(), 5, 1, 2)
    return images, cams * batch["labels"][..., None, None], batch["labels"]


def test_walk_with_a_trained_boundary_network_is_irnets_walk():
    images, cams, _ = _walk_case()
    torch.manual_seed(0)
    irnet = python_models.create("irnet", backbone="tiny", num_classes=3, cam_network=None).eval()
    walk = walk_of(irnet)
    assert isinstance(walk, BoundaryNetworkWalk) and "boundary network of irnet" in walk.name
    settings = chain_settings("irnet")
    labels = refine(images, cams, "rw", settings, walk)
    # Oracle: irn's make_sem_seg_labels on its own boundary map.
    boundary = irnet.boundary(images.float() / 255)
    walked = wsss_ext.irnet_random_walk(F.avg_pool2d(cams, 4), boundary, 10.0, 256, 5)
    assert torch.equal(labels, wsss_ext.walk_to_labels(walked, (32, 32), 0.25))
    fallback = refine(images, cams, "rw", settings)
    assert not torch.equal(labels, fallback)  # the image-gradient boundary is another map


def test_walk_with_a_trained_affinity_network_is_psas_walk():
    images, cams, tags = _walk_case()
    torch.manual_seed(0)
    affinitynet = python_models.create("affinitynet", backbone="tiny", num_classes=3, cam_network=None).eval()
    walk = walk_of(affinitynet)
    assert isinstance(walk, AffinityNetworkWalk) and walk.stride == 8
    labels = refine(images, cams, "rw", chain_settings("affinitynet"), walk)
    with torch.no_grad():
        walked = psa_random_walk(cams, tags, affinitynet.features(images.float() / 255), 8, 8.0, 256, 16.0, 5)
    assert torch.equal(labels, walked.argmax(1))


def test_methods_without_a_walk_network_fall_back_to_the_image_gradient():
    assert walk_of(python_models.create("cam", backbone="tiny", num_classes=3)) is None
    assert walk_of(None) is None
    walk, line = refine_command.walk_of_run(_args(), "cpu")
    assert walk is None and "image-gradient" in line and "image-gradient" in ImageGradientWalk().name


def _run_folder(root, key, **overrides):
    from wsss_app.pipeline.runs import save_checkpoint, write_config

    torch.manual_seed(0)
    model = python_models.create(key, backbone="tiny", num_classes=3, **overrides).eval()
    root.mkdir()
    write_config(root, {"method": key, "overrides": {"backbone": "tiny", "num_classes": 3, **overrides},
                        "classes": ["a", "b", "c"]})
    save_checkpoint(root, {"model": model.state_dict(), "epoch": 1, "step": 4})
    return model


def test_refine_run_walks_the_runs_boundary_network_and_says_so(tmp_path, capsys):
    from PIL import Image

    images, cams, _ = _walk_case()
    for folder in ("images", "cams"):
        (tmp_path / folder).mkdir()
    for index in range(2):
        Image.fromarray(images[index].permute(1, 2, 0).numpy()).save(tmp_path / "images" / f"{index}.png")
        np.save(tmp_path / "cams" / f"{index}.npy", cams[index].numpy())
    irnet = _run_folder(tmp_path / "irnet_run", "irnet", cam_network=None)
    _run_folder(tmp_path / "cam_run", "cam")
    command = ["refine", "--images", str(tmp_path / "images"), "--cams", str(tmp_path / "cams"), "--chain", "rw",
               "--no-progress", "--preset", "irnet"]
    assert cli.main([*command, "--out", str(tmp_path / "out"), "--run", str(tmp_path / "irnet_run")]) == 0
    assert "random walk: the trained boundary network of irnet" in capsys.readouterr().out
    # _load_cam divides each channel by its max: the oracle refines the same CAMs.
    peak = cams.flatten(2).amax(2).clamp(min=1e-5)[..., None, None]
    expected = refine(images, cams / peak, "rw", chain_settings("irnet"), BoundaryNetworkWalk(irnet))
    for index in range(2):
        assert np.array_equal(read_label_map(tmp_path / "out" / f"{index}.png"), expected[index].numpy())
    assert cli.main([*command, "--out", str(tmp_path / "out2"), "--run", str(tmp_path / "cam_run")]) == 0
    assert "random walk: the image-gradient boundary" in capsys.readouterr().out
    assert cli.main([*command, "--out", str(tmp_path / "out3"), "--run", str(tmp_path / "nothing")]) == 2
