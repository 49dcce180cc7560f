"""Puzzle tile / merge, CutMix and ClassMix (python_models.augment): exact
inverses, the documented tile layout, exact mixing shares and masks, checked
against loops written here from the published rules."""

from __future__ import annotations

import math

import pytest
import torch

from python_models.augment import classmix, classmix_masks, cutmix, cutmix_box, puzzle_merge, puzzle_tile


# --- puzzle tile / merge -------------------------------------------------------------------------

@pytest.mark.parametrize("shape, pieces", [((1, 1, 2, 2), 4), ((2, 3, 4, 6), 4), ((3, 2, 32, 32), 4),
                                           ((2, 1, 9, 6), 9), ((2, 3, 5, 7), 1), ((2, 2, 8, 12), 16)])
def test_merge_inverts_tile_exactly(shape, pieces):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    tiles = puzzle_tile(x, pieces)
    k = math.isqrt(pieces)
    assert tiles.shape == (pieces * shape[0], shape[1], shape[2] // k, shape[3] // k)
    assert torch.equal(puzzle_merge(tiles, pieces), x)
    labels = torch.randint(0, 255, shape)  # any dtype
    assert torch.equal(puzzle_merge(puzzle_tile(labels, pieces), pieces), labels)


def test_tile_of_a_hand_made_image_gives_the_documented_pieces():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    tiles = puzzle_tile(x)
    expected = torch.tensor([[[0, 1], [4, 5]], [[2, 3], [6, 7]], [[8, 9], [12, 13]], [[10, 11], [14, 15]]],
                            dtype=torch.float).unsqueeze(1)
    assert torch.equal(tiles, expected)


def test_tile_is_piece_major_as_a_loop_over_pieces_then_images():
    batch, k = 3, 3
    x = torch.randn(batch, 2, 6, 9, generator=torch.Generator().manual_seed(1))
    h, w = 6 // k, 9 // k
    oracle = [x[b, :, r * h:(r + 1) * h, c * w:(c + 1) * w] for r in range(k) for c in range(k) for b in range(batch)]
    assert torch.equal(puzzle_tile(x, k * k), torch.stack(oracle))
    # Merging per-tile maps places tile p * B + b at grid cell (p // k, p % k) of image b.
    tiles = torch.randn(k * k * batch, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    merged = puzzle_merge(tiles, k * k)
    for p in range(k * k):
        for b in range(batch):
            r, c = divmod(p, k)
            assert torch.equal(merged[b, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2], tiles[p * batch + b])


def test_tile_and_merge_refuse_bad_input_by_name():
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="n_pieces"):
        puzzle_tile(x, 3)
    with pytest.raises(ValueError, match="n_pieces"):
        puzzle_merge(x, 8)
    with pytest.raises(TypeError, match="n_pieces"):
        puzzle_tile(x, 4.0)
    with pytest.raises(ValueError, match="divisible"):
        puzzle_tile(torch.zeros(2, 3, 7, 8))
    with pytest.raises(ValueError, match="images"):
        puzzle_tile(torch.zeros(3, 8, 8))
    with pytest.raises(TypeError, match="images"):
        puzzle_tile([[1.0]])
    with pytest.raises(ValueError, match="tiles"):
        puzzle_merge(torch.zeros(6, 3, 4, 4))


# --- CutMix --------------------------------------------------------------------------------------

def _markers(batch: int, size: int) -> torch.Tensor:
    """Image b is the constant b + 1 (so every pixel says which image it came from)."""
    return (torch.arange(batch, dtype=torch.float) + 1).view(batch, 1, 1, 1).expand(batch, 3, size, size).clone()


def _box_of(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """The bounding box of a bool H x W mask, or None if empty; asserts the mask is that box."""
    if not mask.any():
        return None
    ys, xs = mask.nonzero(as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    assert int(mask.sum()) == (y1 - y0) * (x1 - x0), "the pasted region is not a rectangle"
    return y0, y1, x0, x1


@pytest.mark.parametrize("seed", range(40))
def test_cutmix_targets_are_the_exact_pixel_shares(seed):
    batch, size = 4, 16
    images = _markers(batch, size)
    targets = torch.eye(batch)
    mixed, mixed_targets = cutmix(images, targets, generator=torch.Generator().manual_seed(seed))
    assert mixed.shape == images.shape and mixed_targets.shape == (batch, batch)
    # Share of image j's pixels in mixed image i == mixed target (i, j), for every pair.
    shares = torch.stack([(mixed[:, 0] == j + 1).flatten(1).double().mean(1) for j in range(batch)], 1)
    torch.testing.assert_close(mixed_targets.double(), shares, atol=1e-6, rtol=0)
    # One box for the whole batch, pasted from one partner per image (a permutation).
    boxes = {_box_of(mixed[i, 0] != i + 1) for i in range(batch)} - {None}
    assert len(boxes) <= 1
    if boxes:
        y0, y1, x0, x1 = boxes.pop()
        partners = [int(mixed[i, 0, y0, x0]) - 1 for i in range(batch)]
        assert sorted(partners) == list(range(batch))
    # Tags mixed by the same share.
    tags = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    _, mixed_tags = cutmix(images, tags, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(mixed_tags.double(), shares @ tags.double(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("lam", [0.75, 0.5, 0.9, 0.0])
def test_cutmix_honours_a_given_lam_up_to_clipping(lam):
    batch, size = 4, 32
    side = 2 * (int(size * math.sqrt(1 - lam)) // 2)  # box side before clipping
    images = _markers(batch, size)
    for seed in range(15):
        mixed, mixed_targets = cutmix(images, torch.eye(batch), lam=lam, generator=torch.Generator().manual_seed(seed))
        kept = mixed_targets.diagonal()
        assert bool((kept >= lam - 1e-6).all())
        y0, y1, x0, x1 = cutmix_box(size, size, lam, torch.Generator().manual_seed(seed))
        assert y1 - y0 <= side and x1 - x0 <= side
        if 0 < y0 and y1 < size:
            assert y1 - y0 == side
        if 0 < x0 and x1 < size:
            assert x1 - x0 == side
        # The same draws: the box cutmix pasted is cutmix_box's.
        moved = [_box_of(mixed[i, 0] != i + 1) for i in range(batch)]
        assert all(box in (None, (y0, y1, x0, x1)) for box in moved)
        if y0 < y1 and x0 < x1 and any(box is not None for box in moved):
            torch.testing.assert_close(1 - kept[[box is not None for box in moved]],
                                       torch.full((sum(box is not None for box in moved),),
                                                  (y1 - y0) * (x1 - x0) / size**2), atol=1e-6, rtol=0)


def test_cutmix_lam_one_changes_nothing_and_seeds_reproduce():
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    targets = torch.eye(3)
    mixed, mixed_targets = cutmix(images, targets, lam=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mixed, images) and torch.equal(mixed_targets, targets)
    first = cutmix(images, targets, generator=torch.Generator().manual_seed(7))
    again = cutmix(images, targets, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # lam drawn uniformly: over many seeds the boxes are of many sizes.
    kept = {round(float(cutmix(images, targets, generator=torch.Generator().manual_seed(s))[1][0].max()), 3)
            for s in range(30)}
    assert len(kept) > 5


def test_cutmix_refuses_bad_input_by_name():
    images, targets = torch.rand(2, 3, 8, 8), torch.eye(2)
    with pytest.raises(ValueError, match="targets"):
        cutmix(images, torch.eye(3))
    with pytest.raises(ValueError, match="targets"):
        cutmix(images, torch.ones(2))
    with pytest.raises(ValueError, match="lam"):
        cutmix(images, targets, lam=1.5)
    with pytest.raises(TypeError, match="images"):
        cutmix(images.to(torch.uint8), targets)
    with pytest.raises(ValueError, match="images"):
        cutmix(images[0], targets)
    with pytest.raises(ValueError, match="targets"):
        cutmix(images, torch.full((2, 2), float("nan")))


# --- ClassMix ------------------------------------------------------------------------------------

def _label_maps() -> torch.Tensor:
    """Three 8 x 8 maps: four classes + ignore; one class; only ignore."""
    first = torch.zeros(8, 8, dtype=torch.long)
    first[:4, 4:] = 3
    first[4:, :4] = 7
    first[4:, 4:] = 12
    first[0, 0] = 255
    second = torch.full((8, 8), 5, dtype=torch.long)
    third = torch.full((8, 8), 255, dtype=torch.long)
    return torch.stack([first, second, third])


@pytest.mark.parametrize("seed", range(12))
def test_classmix_pastes_half_of_a_classes_onto_the_next_image(seed):
    label_maps = _label_maps()
    batch = label_maps.shape[0]
    images = _markers(batch, 8)
    mixed, mixed_labels = classmix(images, label_maps, generator=torch.Generator().manual_seed(seed))
    for i in range(batch):
        partner = (i + 1) % batch
        from_a = mixed[i, 0] == i + 1
        assert bool((from_a | (mixed[i, 0] == partner + 1)).all())  # every other pixel from (i + 1) mod B
        assert bool((mixed[i] == mixed[i, :1]).all())  # channels mixed alike
        present = [c for c in label_maps[i].unique().tolist() if c != 255]
        chosen = [c for c in present if bool(from_a[label_maps[i] == c].all())]
        for c in present:  # a class is taken whole or not at all
            assert bool(from_a[label_maps[i] == c].all()) or not bool(from_a[label_maps[i] == c].any())
        assert len(chosen) == (len(present) + 1) // 2  # ceil(n / 2), the ClassMix code's int((n + n % 2) / 2)
        assert not bool(from_a[label_maps[i] == 255].any())  # ignore is never chosen
        expected = torch.where(from_a, label_maps[i], label_maps[partner])
        assert torch.equal(mixed_labels[i], expected)
    masks = classmix_masks(label_maps, torch.Generator().manual_seed(seed))
    assert torch.equal(masks, mixed[:, 0] == images[:, 0])


def test_classmix_choices_vary_with_the_seed_and_keep_their_size():
    label_maps = _label_maps()
    subsets = set()
    for seed in range(20):
        masks = classmix_masks(label_maps, torch.Generator().manual_seed(seed))
        chosen = tuple(sorted(label_maps[0][masks[0]].unique().tolist()))
        assert len(chosen) == 2 and 255 not in chosen
        subsets.add(chosen)
        assert bool(masks[1].all()) and not bool(masks[2].any())  # one class: taken; all ignore: nothing
    assert len(subsets) >= 3
    # Five classes: ceil(5 / 2) = 3.
    five = torch.arange(5).repeat_interleave(4).view(1, 4, 5)
    assert len(five[classmix_masks(five, torch.Generator().manual_seed(0))].unique()) == 3


def test_classmix_refuses_bad_input_by_name():
    images, label_maps = torch.rand(3, 3, 8, 8), _label_maps()
    with pytest.raises(TypeError, match="label_maps"):
        classmix(images, label_maps.float())
    with pytest.raises(ValueError, match="label_maps"):
        classmix(images, label_maps[:2])
    with pytest.raises(ValueError, match="label_maps"):
        classmix(images, label_maps[:, :4])
    with pytest.raises(ValueError, match="label_maps"):
        classmix(images, label_maps - 300)
    with pytest.raises(TypeError, match="images"):
        classmix(label_maps, label_maps)
