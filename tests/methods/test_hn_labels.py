"""HN-labels (Lahoud & Ghanem 2020): back-projection, normals, the floor fit
on synthetic pinhole views of planes (level and tilted cameras), the label
binning against hand-computed values, the method's defaults, input checks and
a short training run."""

from __future__ import annotations

import math

import pytest
import torch
from method_support import one_thread, seeded_batch, train_losses  # noqa: F401  (one_thread: autouse)

import python_models
from python_models.methods.hn_labels import HNLabels
from python_models.pseudo.hn_labels import (
    backproject,
    fit_floor,
    height_and_angle,
    hn_labels,
    surface_normals,
)

S = 24
K = torch.tensor([[20.0, 0.0, 11.5], [0.0, 20.0, 11.5], [0.0, 0.0, 1.0]])


def _view(pitch_deg: float, height: float, wall: float | None = None, box: tuple | None = None) -> torch.Tensor:
    """Depth (S x S) of a floor ``height`` m below a camera pitched down by ``pitch_deg``, optionally a
    back wall at ``wall`` m and a box top (x0, x1, z0, z1, top height) on the floor; world y down."""
    v, u = torch.meshgrid(torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64), indexing="ij")
    rays = torch.stack([(u - 11.5) / 20.0, (v - 11.5) / 20.0, torch.ones_like(u)])  # camera coords, z = 1
    a = math.radians(pitch_deg)
    world = torch.einsum("ij,jhw->ihw", torch.tensor([[1, 0, 0], [0, math.cos(a), math.sin(a)],
                                                      [0, -math.sin(a), math.cos(a)]], dtype=torch.float64), rays)
    t = torch.where(world[1] > 1e-9, height / world[1].clamp_min(1e-9), torch.full_like(u, float("inf")))
    if wall is not None:
        t = torch.minimum(t, wall / world[2])
    if box is not None:
        x0, x1, z0, z1, top = box
        tb = (height - top) / world[1].clamp_min(1e-9)
        hit = (world[1] > 1e-9) & (tb * world[0] >= x0) & (tb * world[0] <= x1) & (tb * world[2] >= z0) \
            & (tb * world[2] <= z1)
        t = torch.where(hit & (tb < t), tb, t)
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t)).float()  # z of the camera ray = t


def test_backprojection_inverts_the_pinhole_projection():
    depth = 1.0 + torch.rand(1, S, S, generator=torch.Generator().manual_seed(0))
    points, valid = backproject(depth, K)
    assert valid.all()
    projected = torch.einsum("ij,bjhw->bihw", K, points)
    u = projected[:, 0] / projected[:, 2]
    v = projected[:, 1] / projected[:, 2]
    rows, cols = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32),
                                indexing="ij")
    torch.testing.assert_close(u[0], cols, atol=1e-4, rtol=0)
    torch.testing.assert_close(v[0], rows, atol=1e-4, rtol=0)
    torch.testing.assert_close(points[:, 2], depth)


def test_normals_of_a_level_floor_point_up_towards_the_camera():
    depth = _view(0.0, 1.5).unsqueeze(0)
    points, valid = backproject(depth, K)
    normals, ok = surface_normals(points, valid)
    rows = slice(14, S)  # the floor fills the lower half (row 12 onwards; its border rows lack neighbours)
    assert ok[0, rows].all() and not ok[0, :12].any()
    torch.testing.assert_close(normals[0, :, rows], torch.tensor([0.0, -1.0, 0.0]).view(3, 1, 1).expand(3, 10, S),
                               atol=1e-4, rtol=0)


def test_a_flat_floor_gives_one_label():
    depth = _view(0.0, 1.4).unsqueeze(0)
    labels = hn_labels(depth, K, generator=torch.Generator().manual_seed(0))
    floor = labels[0, 13:]
    assert floor.unique().tolist() == [0]
    assert torch.all(labels[0, :12] == 255)  # sky: no depth


@pytest.mark.parametrize("pitch", [15.0, 35.0])
def test_a_tilted_camera_still_finds_the_floor(pitch):
    depth = _view(pitch, 1.5, wall=4.0).unsqueeze(0)
    height, angle, valid, floor = height_and_angle(depth, K, generator=torch.Generator().manual_seed(0))
    a = math.radians(pitch)
    up_in_camera = torch.tensor([0.0, -math.cos(a), -math.sin(a)])  # Rᵀ (0, -1, 0): world up seen from the camera
    torch.testing.assert_close(floor[0, :3], up_in_camera, atol=1e-3, rtol=0)
    assert float(floor[0, 3]) == pytest.approx(1.5, abs=1e-3)  # camera 1.5 m above the plane
    labels = hn_labels(depth, K, generator=torch.Generator().manual_seed(0))
    points, _ = backproject(depth, K)
    world_y = torch.einsum("chw,c->hw", points[0], -up_in_camera)  # depth below the camera along gravity
    on_floor = valid[0] & ((world_y - 1.5).abs() < 1e-3)
    on_wall = valid[0] & (height[0] > 0.6)
    assert on_floor.sum() > 20 and on_wall.sum() > 20
    assert labels[0][on_floor].unique().tolist() == [0]
    assert torch.all(angle[0][on_wall] > 85) and torch.all(angle[0][on_wall] < 95)
    # wall pixels: normal bin 1 (60 - 120 degrees), height bin floor(h / 0.5)
    expected = (height[0][on_wall] / 0.5).floor().clamp(max=5).long() * 3 + 1
    assert torch.equal(labels[0][on_wall], expected)


def test_binning_by_hand_on_a_box_top():
    # a box top 0.8 m above the floor: up-facing (angle 0), height bin floor(0.8 / 0.5) = 1 -> label 3
    depth = _view(20.0, 1.5, wall=5.0, box=(-1.0, 1.0, 1.8, 3.2, 0.8)).unsqueeze(0)
    height, angle, valid, _ = height_and_angle(depth, K, generator=torch.Generator().manual_seed(0))
    labels = hn_labels(depth, K, generator=torch.Generator().manual_seed(0))
    top = valid[0] & ((height[0] - 0.8).abs() < 1e-3) & (angle[0] < 1)
    assert top.sum() >= 4
    assert labels[0][top].unique().tolist() == [3]
    coarse = hn_labels(depth, K, height_bins=2, normal_bins=2, bin_height=1.0,
                       generator=torch.Generator().manual_seed(0))
    assert coarse[0][top].unique().tolist() == [0]  # 0.8 m < 1 m, angle < 90


def test_floor_fit_is_not_pulled_by_the_bottom_of_a_near_wall():
    # the lowest points along the camera's -y include the wall's bottom rows: the normals exclude them
    depth = _view(10.0, 1.5, wall=3.0).unsqueeze(0)
    points, valid = backproject(depth, K)
    normals, ok = surface_normals(points, valid)
    floor = fit_floor(points, ok, normals, generator=torch.Generator().manual_seed(0))
    assert float(floor[0, 3]) == pytest.approx(1.5, abs=1e-3)
    a = math.radians(10.0)
    torch.testing.assert_close(floor[0, :3], torch.tensor([0.0, -math.cos(a), -math.sin(a)]), atol=1e-3, rtol=0)


def test_labels_reject_bad_input_by_name():
    depth = _view(0.0, 1.5).unsqueeze(0)
    with pytest.raises(TypeError, match="depth"):
        hn_labels(depth.long(), K)
    with pytest.raises(ValueError, match="depth"):
        hn_labels(depth[0, 0], K)
    with pytest.raises(ValueError, match="intrinsics"):
        hn_labels(depth, K[:2])
    with pytest.raises(ValueError, match="intrinsics"):
        hn_labels(depth, -K)
    with pytest.raises(ValueError, match="ignore_index"):
        hn_labels(depth, K, ignore_index=3)
    with pytest.raises(ValueError, match="depth"):
        hn_labels(torch.zeros(1, S, S), K)


def test_defaults_are_the_documented_choices():
    # the paper's bin counts and plane fit are unverified: 6 x 0.5 m height bins x 3 normal bins (this library)
    assert HNLabels.DEFAULTS == dict(num_classes=18, backbone="resnet101", output_stride=8, aspp_channels=256,
                                     aspp_rates=(12, 24, 36), normal_bins=3, bin_height=0.5, floor_quantile=0.3,
                                     inlier_threshold=0.05, max_tilt=45.0, ransac_iterations=200, ransac_seed=0)
    assert HNLabels.KERNELS == () and python_models.METHODS["hn_labels"] is HNLabels
    with pytest.raises(ValueError, match="normal_bins"):
        HNLabels(backbone="tiny", num_classes=7)


def _model(**overrides) -> HNLabels:
    torch.manual_seed(0)
    return HNLabels(backbone="tiny", aspp_channels=16, **overrides)


def test_method_uses_precomputed_labels_or_makes_them_from_depth():
    model = _model().eval()
    batch = seeded_batch(model)
    labels = model.labels(batch["depth"], batch["intrinsics"])
    assert labels.shape == (2, 32, 32) and set(labels.unique().tolist()) <= set(range(18)) | {255}
    with torch.no_grad():
        from_depth = model.losses(batch)["loss"]
        precomputed = model.losses({"images": batch["images"], "hn_labels": labels})["loss"]
    assert torch.equal(from_depth, precomputed)
    with pytest.raises(ValueError, match="hn_labels"):
        model.losses({"images": batch["images"], "hn_labels": torch.full((2, 32, 32), 18)})
    with pytest.raises(ValueError, match="depth"):
        model.losses({**batch, "depth": batch["depth"][:, :16]})
    with pytest.raises(ValueError, match="batch lacks"):
        model.losses({"images": batch["images"]})


def test_loss_falls_over_20_steps():
    model = _model()
    batch = seeded_batch(model)
    batch = {"images": batch["images"], "hn_labels": model.labels(batch["depth"], batch["intrinsics"])}
    losses = train_losses(model, batch, steps=20, lr=3e-3)
    assert losses[-1] < 0.7 * losses[0]
