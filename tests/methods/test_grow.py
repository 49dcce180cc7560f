"""DSRG's seeded region growing (python_models.pseudo.dsrg_grow) against an
oracle written from speedinghzl/DSRG ``pylayers.py`` ``generate_seed_step``
with scipy's 8-connected component labelling, and its properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from python_models.pseudo import dsrg_grow

IGNORE = 255


def _oracle(seeds: np.ndarray, probs: np.ndarray, tags: np.ndarray, th_fg: float, th_bg: float) -> np.ndarray:
    """One image, as DSRG: label map = cues overwritten by confident argmax over the
    present labels; per class, keep the 8-connected components of its label that
    hold one of its (still labelled) cues; cued pixels never change."""
    present = np.concatenate([[1], tags]).astype(bool)
    index = np.flatnonzero(present)
    best_label = index[np.argmax(probs[index], axis=0)]
    best = probs[index].max(axis=0)
    label_map = np.where(seeds == IGNORE, -1, seeds)
    height, width = seeds.shape
    for y in range(height):
        for x in range(width):
            c = best_label[y, x]
            if best[y, x] > th_fg and c != 0:
                label_map[y, x] = c
            elif c == 0 and best[y, x] > th_bg:
                label_map[y, x] = 0
    out = seeds.copy()
    for c in index:
        components, _ = ndimage.label(label_map == c, structure=np.ones((3, 3)))
        keep = set(components[(seeds == c) & (label_map == c)].tolist()) - {0}
        for y in range(height):
            for x in range(width):
                if components[y, x] in keep and seeds[y, x] == IGNORE:
                    out[y, x] = c
    return out


def _random_case(generator: torch.Generator, n_classes: int = 3, size: tuple[int, int] = (6, 7)):
    tags = (torch.rand(n_classes, generator=generator) < 0.6).float()
    if tags.sum() == 0:
        tags[0] = 1
    present = torch.cat([torch.ones(1), tags]).nonzero().flatten()
    logits = 4 * torch.randn(n_classes + 1, *size, generator=generator)
    probs = torch.softmax(logits, 0)
    seeds = present[torch.randint(0, len(present), size, generator=generator)]
    seeds = torch.where(torch.rand(size, generator=generator) < 0.25, seeds, torch.full_like(seeds, IGNORE))
    return seeds, probs, tags


@pytest.mark.parametrize("thresholds", [(0.85, 0.99), (0.5, 0.6), (0.3, 0.3)])
def test_matches_the_connected_component_oracle_on_random_cases(thresholds):
    generator = torch.Generator().manual_seed(7)
    cases = [_random_case(generator) for _ in range(24)]
    seeds = torch.stack([c[0] for c in cases])
    probs = torch.stack([c[1] for c in cases])
    tags = torch.stack([c[2] for c in cases])
    grown = dsrg_grow(seeds, probs, tags, *thresholds)
    changed = 0
    for b in range(len(cases)):
        expected = _oracle(seeds[b].numpy(), probs[b].double().numpy(), tags[b].numpy(), *thresholds)
        np.testing.assert_array_equal(grown[b].numpy(), expected)
        changed += int((grown[b] != seeds[b]).sum())
    assert changed > 10  # the cases do grow


def test_properties_superset_tags_and_thresholds():
    generator = torch.Generator().manual_seed(3)
    cases = [_random_case(generator, 4, (9, 8)) for _ in range(16)]
    seeds = torch.stack([c[0] for c in cases])
    probs = torch.stack([c[1] for c in cases])
    tags = torch.stack([c[2] for c in cases])
    fg, bg = 0.6, 0.8
    grown = dsrg_grow(seeds, probs, tags, fg, bg)
    seeded = seeds != IGNORE
    assert torch.equal(grown[seeded], seeds[seeded])                      # grown ⊇ seed
    present = torch.cat([torch.ones(len(tags), 1), tags], 1).bool()
    labelled = grown != IGNORE
    assert present.gather(1, grown.masked_fill(~labelled, 0).flatten(1)).view_as(grown)[labelled].all()
    new = labelled & ~seeded
    assert new.sum() > 0
    chosen = probs.gather(1, grown.masked_fill(~new, 0).unsqueeze(1)).squeeze(1)[new]
    limit = torch.where(grown[new] == 0, bg, fg)
    assert (chosen > limit).all()                                         # thresholds respected
    masked = probs.masked_fill(~present[..., None, None], -1)
    assert torch.equal(masked.argmax(1)[new], grown[new])                 # the candidate is the argmax


def test_hand_case_eight_connectivity_and_strict_thresholds():
    # 1 class; a diagonal chain of confident pixels is one 8-connected component.
    seeds = torch.full((1, 3, 3), IGNORE)
    seeds[0, 0, 0] = 1
    seeds[0, 0, 2] = 0  # a background seed: the background grows only from its seeds too
    fg = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.9, 0.0], [0.0, 0.0, 0.85]])
    probs = torch.stack([1 - fg, fg]).unsqueeze(0)
    grown = dsrg_grow(seeds, probs, torch.ones(1, 1), 0.85, 0.99)
    # (1, 1) joins diagonally; (2, 2) has exactly 0.85, not above the threshold; the rest is
    # background at 1.0 > 0.99, 8-connected to the background seed.
    assert grown[0].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 255]]
    assert dsrg_grow(seeds, probs, torch.ones(1, 1), 0.84, 0.99)[0, 2, 2] == 1


def test_a_seed_confidently_of_another_class_is_no_source_and_a_class_absent_never_grows():
    # Pixel 0 is seeded 1 but confidently class 2: it neither grows class 1 nor changes; pixel 1 (confident 1)
    # has no class-1 source left. Pixel 3 is seeded 2 and grows class 2 into pixel 2.
    seeds = torch.tensor([[[1, IGNORE, IGNORE, 2]]])
    probs = torch.tensor([[[[0.0, 0.0, 0.0, 0.0]], [[0.05, 0.95, 0.05, 0.05]], [[0.95, 0.05, 0.95, 0.95]]]])
    assert dsrg_grow(seeds, probs, torch.ones(1, 2))[0].tolist() == [[1, IGNORE, 2, 2]]
    # With class 2 absent from the tags no pixel takes it; the seeds must then hold tagged classes only.
    with pytest.raises(ValueError, match="seeds"):
        dsrg_grow(seeds, probs, torch.tensor([[1.0, 0.0]]))
    only_one = torch.tensor([[[1, IGNORE, IGNORE, IGNORE]]])
    grown = dsrg_grow(only_one, probs, torch.tensor([[1.0, 0.0]]))
    assert 2 not in grown.unique().tolist()
    assert grown[0].tolist() == [[1, 1, IGNORE, IGNORE]]  # argmax over {bg, 1} at pixel 1 is 1 (0.95)


def test_bad_inputs_name_the_argument():
    seeds = torch.full((1, 4, 4), IGNORE)
    probs = torch.full((1, 3, 4, 4), 1 / 3)
    tags = torch.ones(1, 2)
    with pytest.raises(ValueError, match="seeds"):
        dsrg_grow(seeds[:, :3], probs, tags)
    with pytest.raises(TypeError, match="seeds"):
        dsrg_grow(seeds.float(), probs, tags)
    with pytest.raises(ValueError, match="labels"):
        dsrg_grow(seeds, probs, torch.ones(1, 3))
    bad = probs.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="probs"):
        dsrg_grow(seeds, bad, tags)
