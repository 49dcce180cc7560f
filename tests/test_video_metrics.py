"""DAVIS's J and F (wsss_ext.metrics): hand-computed masks, a brute-force
oracle written from davis2017-evaluation's definitions, OpenCV / scikit-image's
dilation where they install, the semi-supervised protocol, and bad input."""

import math

import numpy as np
import pytest
import torch

from wsss_ext.metrics import (
    boundary_map,
    boundary_tolerance,
    contour_accuracy,
    davis_scores,
    davis_statistics,
    davis_summary,
    dilate_disk,
    region_similarity,
)


def square(top, left, side=4, size=10):
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


# --- an oracle from the published definitions, pixel by pixel ------------------------------------------


def seg2bmap_oracle(seg: np.ndarray) -> np.ndarray:
    """davis2017's rule, one pixel at a time: a pixel is a boundary when its
    east, south or south-east neighbour (outside = 0) differs; on the last row
    only east counts, on the last column only south, never the last pixel."""
    h, w = seg.shape
    at = lambda y, x: bool(seg[y, x]) if y < h and x < w else False  # noqa: E731
    out = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            v = at(y, x)
            if y == h - 1 and x == w - 1:
                out[y, x] = False
            elif y == h - 1:
                out[y, x] = v != at(y, x + 1)
            elif x == w - 1:
                out[y, x] = v != at(y + 1, x)
            else:
                out[y, x] = v != at(y, x + 1) or v != at(y + 1, x) or v != at(y + 1, x + 1)
    return out


def f_measure_oracle(pred: np.ndarray, gt: np.ndarray, radius: int) -> float:
    """Boundary F-measure: a boundary pixel is matched when a boundary pixel
    of the other mask lies at Euclidean distance <= radius."""
    bp, bg = seg2bmap_oracle(pred), seg2bmap_oracle(gt)
    p_pts, g_pts = np.argwhere(bp), np.argwhere(bg)

    def matched(points, others):
        if len(others) == 0:
            return 0
        d2 = ((points[:, None, :] - others[None, :, :]) ** 2).sum(-1)
        return int((d2.min(1) <= radius * radius).sum())

    n_p, n_g = len(p_pts), len(g_pts)
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    precision, recall = matched(p_pts, g_pts) / n_p, matched(g_pts, p_pts) / n_g
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def random_blobs(generator, shape, density=0.35):
    """Masks with blobs (thresholded smooth noise), so boundaries are long and varied."""
    noise = torch.rand(*shape[:-2], 1, shape[-2] // 3 + 1, shape[-1] // 3 + 1, generator=generator)
    smooth = torch.nn.functional.interpolate(noise.flatten(0, -4) if noise.dim() > 4 else noise,
                                             size=shape[-2:], mode="bilinear", align_corners=False)
    return (smooth.reshape(shape) > 1 - density)


# --- J ---------------------------------------------------------------------------------------------------


def test_shifted_square_iou_by_hand():
    # 4 x 4 squares, one row apart: 12 shared pixels of 20 covered.
    assert float(region_similarity(square(2, 2), square(3, 2))) == pytest.approx(12 / 20)
    # one row and one column apart: 9 shared of 16 + 16 - 9 = 23
    assert float(region_similarity(square(2, 2), square(3, 3))) == pytest.approx(9 / 23)
    assert float(region_similarity(square(0, 0), square(5, 5))) == 0.0
    assert float(region_similarity(square(2, 2), square(2, 2))) == 1.0


def test_region_similarity_empty_masks_follow_davis():
    empty = torch.zeros(10, 10, dtype=torch.bool)
    assert float(region_similarity(empty, empty)) == 1.0  # nothing to find, nothing found
    assert float(region_similarity(empty, square(2, 2))) == 0.0
    assert float(region_similarity(square(2, 2), empty)) == 0.0


def test_region_similarity_is_batched_symmetric_and_takes_integer_masks():
    g = torch.Generator().manual_seed(0)
    a, b = random_blobs(g, (3, 5, 16, 20)), random_blobs(g, (3, 5, 16, 20))
    j = region_similarity(a, b)
    assert j.shape == (3, 5) and j.dtype == torch.float64
    torch.testing.assert_close(j, region_similarity(b, a))
    for i in range(3):
        for t in range(5):
            inter, union = (a[i, t] & b[i, t]).sum().item(), (a[i, t] | b[i, t]).sum().item()
            assert j[i, t].item() == pytest.approx(inter / union if union else 1.0)
    torch.testing.assert_close(region_similarity(a.long() * 7, b.to(torch.uint8)), j)


# --- boundaries and their tolerance ---------------------------------------------------------------------


def test_boundary_map_matches_the_pixel_rule():
    g = torch.Generator().manual_seed(1)
    masks = random_blobs(g, (6, 11, 13))
    masks[0] = True  # full image: no boundary, the image border is not a contour
    masks[1] = False
    boundaries = boundary_map(masks)
    for mask, boundary in zip(masks, boundaries):
        assert np.array_equal(boundary.numpy(), seg2bmap_oracle(mask.numpy()))
    assert not boundaries[0].any() and not boundaries[1].any()
    # a square's boundary: half a pixel towards the origin, a closed ring of 5 x 5 - 3 x 3 pixels
    ring = boundary_map(square(2, 2))
    assert ring.sum() == 16 and ring[1, 1] and ring[5, 5] and not ring[2, 2] and not ring[6, 6]


def test_dilate_disk_is_a_disk():
    point = torch.zeros(15, 15, dtype=torch.bool)
    point[7, 7] = True
    for radius in range(5):
        ys, xs = torch.meshgrid(torch.arange(15), torch.arange(15), indexing="ij")
        disk = (ys - 7) ** 2 + (xs - 7) ** 2 <= radius ** 2
        assert torch.equal(dilate_disk(point, radius), disk)
    # near the border the disk is cut, not wrapped
    corner = torch.zeros(6, 6, dtype=torch.bool)
    corner[0, 0] = True
    assert dilate_disk(corner, 2).sum() == 6  # (0,0) (0,1) (0,2) (1,0) (1,1) (2,0)
    assert not dilate_disk(corner, 2)[-1].any() and not dilate_disk(corner, 2)[:, -1].any()


def test_dilate_disk_matches_opencv_with_skimage_disk():
    cv2 = pytest.importorskip("cv2")
    morphology = pytest.importorskip("skimage.morphology")
    g = torch.Generator().manual_seed(2)
    masks = torch.rand(4, 23, 31, generator=g) > 0.97
    for radius in (1, 3, 6):
        kernel = morphology.disk(radius).astype(np.uint8)
        for mask, ours in zip(masks, dilate_disk(masks, radius)):
            expected = cv2.dilate(mask.numpy().astype(np.uint8), kernel)
            assert np.array_equal(ours.numpy(), expected.astype(bool))


def test_boundary_tolerance_is_davis_share_of_the_diagonal():
    assert boundary_tolerance(480, 854) == math.ceil(0.008 * math.hypot(480, 854)) == 8
    assert boundary_tolerance(10, 10) == 1
    assert boundary_tolerance(100, 100, bound_th=3) == 3
    for bad in (0, -0.1, 2.5, float("nan")):
        with pytest.raises(ValueError, match="bound_th"):
            boundary_tolerance(10, 10, bad)


# --- F ---------------------------------------------------------------------------------------------------


def test_contour_accuracy_by_hand():
    a = square(2, 2)
    assert float(contour_accuracy(a, a)) == 1.0
    # far apart (6 pixels; tolerance 1 pixel on a 10 x 10 image): no boundary pixel matches
    assert float(contour_accuracy(square(0, 0, 3), square(6, 6, 3))) == 0.0
    # one row down, within the 1-pixel tolerance: every boundary pixel has a partner
    assert float(contour_accuracy(a, square(3, 2))) == 1.0
    # three columns right, radius 1: of each ring's 16 pixels 9 match (3 on the top row, 3 on the
    # bottom row, the 3 of the facing side), so P = R = F = 9 / 16
    assert float(contour_accuracy(a, square(2, 5), bound_th=1)) == pytest.approx(9 / 16)
    # beyond a tolerance of 2 with a shift of 3 rows ... and within one of 3
    shifted = square(5, 2, size=12)
    assert float(contour_accuracy(square(2, 2, size=12), shifted, bound_th=3)) == 1.0
    assert float(contour_accuracy(square(2, 2, size=12), shifted, bound_th=2)) < 1.0


def test_contour_accuracy_empty_masks_follow_davis():
    empty = torch.zeros(10, 10, dtype=torch.bool)
    assert float(contour_accuracy(empty, empty)) == 1.0
    assert float(contour_accuracy(empty, square(2, 2))) == 0.0  # P = 1, R = 0
    assert float(contour_accuracy(square(2, 2), empty)) == 0.0  # P = 0, R = 1


def test_contour_accuracy_matches_the_oracle_on_random_masks():
    g = torch.Generator().manual_seed(3)
    pred, target = random_blobs(g, (8, 17, 23)), random_blobs(g, (8, 17, 23))
    pred[0] = target[0]
    pred[1] = False
    for bound_th in (0.008, 2, 4):
        ours = contour_accuracy(pred, target, bound_th)
        radius = boundary_tolerance(17, 23, bound_th)
        expected = [f_measure_oracle(p.numpy(), t.numpy(), radius) for p, t in zip(pred, target)]
        np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12)
    assert float(ours[0]) == 1.0
    torch.testing.assert_close(contour_accuracy(pred, target), contour_accuracy(target, pred))


# --- the video protocol ----------------------------------------------------------------------------------


def test_davis_scores_leave_out_the_first_and_last_frames():
    target = torch.zeros(4, 10, 10, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    target[:, 7:9, 7:9] = 2
    pred = target.clone()
    pred[0] = 0  # the given frame: not scored
    pred[3] = 0  # the last frame: not scored
    pred[1, 2:6, 2:6] = 0
    pred[1, 3:7, 2:6] = 1  # object 1 one row down in frame 1: J = 12 / 20
    pred[2, 7:9, 7:9] = 0  # object 2 lost in frame 2: J = F = 0
    scores = davis_scores(pred, target)
    assert scores.frames == [1, 2] and scores.j.shape == (2, 2)
    torch.testing.assert_close(scores.j, torch.tensor([[0.6, 1.0], [1.0, 0.0]], dtype=torch.float64))
    assert scores.f[1].tolist() == [1.0, 0.0]
    summary = scores.summary()
    assert summary["objects"] == 2
    assert summary["J"] == pytest.approx((0.8 + 0.5) / 2)
    assert summary["J&F"] == pytest.approx((summary["J"] + summary["F"]) / 2)
    every = davis_scores(pred, target, skip_first_last=False)
    assert every.frames == [0, 1, 2, 3] and every.j[0, 0] == 0.0


def test_davis_scores_objects_come_from_the_first_frame_and_void_is_background():
    target = torch.zeros(3, 8, 8, dtype=torch.long)
    target[:, 1:4, 1:4] = 1
    target[1, 6:8, 6:8] = 255  # VOC-style void: DAVIS's loader makes it background
    pred = (target == 1).long()
    assert davis_scores(pred, target).j.tolist() == [[1.0]]
    assert davis_scores(pred, target, n_objects=3).n_objects == 3
    with pytest.raises(ValueError, match="label 2 but the video has 1 objects"):
        davis_scores(pred * 2, target)


def test_davis_statistics_and_summary():
    mean, recall, decay = davis_statistics(torch.tensor([1.0, 0.8, 0.4, 0.2]))
    # DAVIS's quarters of 4 frames: [0:2] and [2:4]
    assert mean == pytest.approx(0.6) and recall == pytest.approx(0.5) and decay == pytest.approx(0.9 - 0.3)
    assert davis_statistics(torch.tensor([0.7]))[2] == 0.0
    target = torch.zeros(3, 6, 6, dtype=torch.long)
    target[:, :3] = 1
    one, two = davis_scores(target, target), davis_scores(torch.zeros_like(target), target)
    summary = davis_summary([one, two])  # one object per video, each an entry
    assert summary["objects"] == 2 and summary["J"] == pytest.approx(0.5) and summary["J&F"] == pytest.approx(0.5)
    assert [row["J"] for row in summary["per_object"]] == [1.0, 0.0]


def test_metrics_reject_bad_input():
    a = square(2, 2)
    with pytest.raises(ValueError, match="same shape"):
        region_similarity(a, a[:-1])
    with pytest.raises(TypeError, match="pred must be a bool or integer mask"):
        contour_accuracy(a.float(), a)
    with pytest.raises(ValueError, match="pred must be ... x H x W"):
        region_similarity(a[0], a[0])
    with pytest.raises(ValueError, match="at least one pixel"):
        contour_accuracy(torch.zeros(3, 0, 5, dtype=torch.bool), torch.zeros(3, 0, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.Tensor"):
        region_similarity(np.zeros((3, 3), bool), a)
    with pytest.raises(ValueError, match="radius"):
        dilate_disk(a, -1)
    video = torch.zeros(4, 6, 6, dtype=torch.long)
    with pytest.raises(TypeError, match="pred must be an integer label map"):
        davis_scores(video.float(), video)
    with pytest.raises(ValueError, match="T x H x W"):
        davis_scores(video[0], video[0])
    with pytest.raises(ValueError, match="at least 3"):
        davis_scores(video[:2], video[:2])
    with pytest.raises(ValueError, match="negative"):
        davis_scores(video - 1, video)
    with pytest.raises(ValueError, match="n_objects"):
        davis_scores(video, video, n_objects=-2)
    with pytest.raises(ValueError, match="at least one frame"):
        davis_statistics(torch.zeros(0))
    with pytest.raises(ValueError, match="no object"):
        davis_summary([davis_scores(video, video)])
