"""The pretext-task methods (RotNet, context prediction, context encoders,
jigsaw, Exemplar-CNN, BigBiGAN): their input generators against hand cases
and independent oracles, their losses' values and gradient directions, the
published defaults, bad input, and a short training smoke test each."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_support import one_thread, seeded_batch, train_losses  # noqa: F401  (one_thread: autouse fixture)

from python_models import create
from python_models.augment import (
    CONTEXT_NEIGHBOURS,
    PATHAK_FILL,
    centre_box,
    exemplar_transforms,
    jigsaw_permutations,
    jigsaw_tiles,
    mask_centre,
    patch_pairs,
    rotations,
    shuffle_tiles,
)
from python_models.losses import (
    bigbigan_discriminator_loss,
    bigbigan_generator_loss,
    context_encoder_weights,
    gan_bce_losses,
    masked_l2,
)

SMALL = {
    "rotnet": {},
    "context_prediction": {"hidden_dim": 32},
    "jigsaw": {"tile_dim": 8, "hidden_dim": 32},
    "exemplar_cnn": {"transforms_per_class": 4},
    "context_encoder": {"bottleneck": 32, "decoder_channels": 8, "discriminator_channels": 8},
    "bigbigan": {"latent_dim": 8, "image_size": 32, "encoder_mlp_dim": 32, "mlp_dim": 32,
                 "generator_channels": 8, "discriminator_channels": 8},
}


def _model(key, **overrides):
    torch.manual_seed(0)
    settings = {"backbone": "tiny", **SMALL[key], **overrides}
    if key in ("rotnet", "context_prediction", "jigsaw", "exemplar_cnn") and "num_classes" not in overrides:
        settings["num_classes"] = {"rotnet": 4, "context_prediction": 8, "jigsaw": 10, "exemplar_cnn": 2}[key]
    return create(key, **settings)


# ----------------------------------------------------------------------------- defaults

def test_defaults_are_the_published_values():
    expected = {
        # Gidaris et al. 2018, Sec. 2.2 (4 rotations); ResNet-50 as Kolesnikov et al. 2019 re-implement it
        "rotnet": dict(num_classes=4, backbone="resnet50"),
        # Doersch et al. 2015, Sec. 3-4: 96-px patches, gap 48, jitter 7, fc7 4096, 8 positions
        "context_prediction": dict(num_classes=8, backbone="resnet50", patch_size=96, gap=48, jitter=7,
                                   hidden_dim=4096),
        # Noroozi & Favaro 2016: 1000 permutations, 64-px crops in 75-px cells, fc6 1024, fc7 4096
        "jigsaw": dict(num_classes=1000, backbone="resnet50", crop_fraction=64 / 75, tile_dim=1024,
                       hidden_dim=4096, standardize=True, permutation_seed=0),
        # Dosovitskiy et al. 2014 (counts unverified): 8000 classes, 100 transforms each, 32-px seeds
        "exemplar_cnn": dict(num_classes=8000, backbone="resnet50", transforms_per_class=100, patch_size=32),
        # context-encoder train.lua + README: wtl2 0.999, overlapPred 4, overlapL2Weight 10, nBottleneck 4000
        "context_encoder": dict(num_classes=0, backbone="resnet50", reconstruction_weight=0.999,
                                adversarial_weight=0.001, overlap=4, overlap_weight=10.0, bottleneck=4000,
                                decoder_channels=64, discriminator_channels=64, learning_rate=2e-4, beta1=0.5,
                                generator_lr_factor=10.0),
        # Donahue & Simonyan 2019 (unverified): z 120, G at 128, ResNet-50 E
        "bigbigan": dict(num_classes=0, backbone="resnet50", latent_dim=120, image_size=128, encoder_mlp_dim=4096,
                         mlp_dim=2048, stochastic_encoder=True, generator_channels=64, discriminator_channels=64,
                         learning_rate=2e-4, betas=(0.0, 0.999)),
    }
    from python_models import METHODS
    for key, defaults in expected.items():
        assert dict(METHODS[key].DEFAULTS) == defaults, key
        assert METHODS[key].KERNELS == ()
        assert METHODS[key].TINY_BACKBONE == "resnet_tiny"


# ----------------------------------------------------------------------------- RotNet

def test_rotations_match_rot90_on_a_hand_case():
    image = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    views, labels = rotations(torch.cat([image, image + 10]))
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # counter-clockwise quarter turns, written out by hand
    assert views[0, 0].tolist() == [[0, 1], [2, 3]]
    assert views[2, 0].tolist() == [[1, 3], [0, 2]]
    assert views[4, 0].tolist() == [[3, 2], [1, 0]]
    assert views[6, 0].tolist() == [[2, 0], [3, 1]]
    assert views[7, 0].tolist() == [[12, 10], [13, 11]]
    # numpy's rot90 (counter-clockwise, as RotNet's flipud(transpose)) on a random 3 x 5 x 5 image
    x = torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    views, _ = rotations(x)
    for k in range(4):
        np.testing.assert_array_equal(views[k].numpy(), np.rot90(x[0].numpy(), k, axes=(1, 2)))
    # RotNet's 90 degrees, np.flipud(np.transpose(img, (1, 0, 2))) on an H x W x C image, is view 1
    hwc = x[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(views[1].permute(1, 2, 0).numpy(), np.flipud(np.transpose(hwc, (1, 0, 2))))


def test_rotnet_loss_is_the_four_way_cross_entropy_over_all_rotations():
    model = _model("rotnet").eval()
    images = seeded_batch(model)["images"]
    loss = model.losses({"images": images})["loss"]
    terms = []
    with torch.no_grad():
        for k in range(4):
            for b in range(2):
                logits = model(torch.rot90(images[b:b + 1], k, (2, 3)))
                terms.append(-torch.log_softmax(logits, 1)[0, k])
    torch.testing.assert_close(loss.detach(), torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)
    assert model(images).shape == (2, 4)
    three = _model("rotnet", num_classes=3)
    assert three.quarter_turns == (0, 1, 2)
    with pytest.raises(ValueError, match="num_classes"):
        _model("rotnet", num_classes=5)


# ----------------------------------------------------------------------------- jigsaw permutations

def _greedy_oracle(candidates: list[tuple[int, ...]], n: int, seed: int) -> list[tuple[int, ...]]:
    """Noroozi's Algorithm 1 in plain Python: first = the seeded draw, then the
    remaining candidate of largest mean Hamming distance to the chosen, first on ties."""
    first = int(torch.randint(0, len(candidates), (1,), generator=torch.Generator().manual_seed(seed)))
    chosen, remaining = [candidates[first]], [c for i, c in enumerate(candidates) if i != first]
    while len(chosen) < n:
        best, best_score = None, -1.0
        for candidate in remaining:
            score = sum(sum(a != b for a, b in zip(candidate, c)) for c in chosen) / len(chosen)
            if score > best_score:
                best, best_score = candidate, score
        chosen.append(best)
        remaining.remove(best)
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_jigsaw_permutations_follow_the_greedy_maximal_hamming_rule(seed):
    # all 4! permutations of 4 tiles, lexicographic order
    candidates = list(itertools.permutations(range(4)))
    got = jigsaw_permutations(10, seed, tiles=4)
    assert [tuple(row) for row in got.tolist()] == _greedy_oracle(candidates, 10, seed)
    # a seeded candidate set of 9-tile permutations
    rng = np.random.RandomState(seed)
    rows = [tuple(rng.permutation(9).tolist()) for _ in range(60)]
    got = jigsaw_permutations(10, seed, candidates=torch.tensor(rows))
    assert [tuple(row) for row in got.tolist()] == _greedy_oracle(rows, 10, seed)
    assert len(set(map(tuple, got.tolist()))) == 10


def test_jigsaw_first_permutation_is_fixed_by_the_seed():
    everything = list(itertools.permutations(range(9)))
    firsts = set()
    for seed in (0, 1, 2):
        index = int(torch.randint(0, len(everything), (1,), generator=torch.Generator().manual_seed(seed)))
        perms = jigsaw_permutations(3, seed)
        assert tuple(perms[0].tolist()) == everything[index]
        assert torch.equal(perms, jigsaw_permutations(3, seed))
        firsts.add(tuple(perms[0].tolist()))
    assert len(firsts) == 3
    # the second one of 9 tiles is at full distance 9 from the first (a derangement exists)
    perms = jigsaw_permutations(3, 0)
    assert int((perms[0] != perms[1]).sum()) == 9


def test_jigsaw_tiles_crop_inside_their_cells_and_shuffle_by_the_permutation():
    coords = torch.stack(torch.meshgrid(torch.arange(30.0), torch.arange(30.0), indexing="ij"))
    images = torch.cat([coords, torch.zeros(1, 30, 30)]).unsqueeze(0).repeat(2, 1, 1, 1) / 30
    tiles, corners = jigsaw_tiles(images, generator=torch.Generator().manual_seed(3))
    assert tiles.shape == (2, 9, 3, 9, 9)  # cells of 10 px, crops round(10 * 64 / 75) = 9
    for t in range(9):
        row, col = divmod(t, 3)
        assert bool(((corners[:, t, 0] >= 10 * row) & (corners[:, t, 0] + 9 <= 10 * row + 10)).all())
        assert bool(((corners[:, t, 1] >= 10 * col) & (corners[:, t, 1] + 9 <= 10 * col + 10)).all())
        torch.testing.assert_close(tiles[:, t, 0, 0, 0] * 30, corners[:, t, 0].float())
    perms = jigsaw_permutations(4, 0)
    shuffled = shuffle_tiles(tiles, perms, torch.tensor([2, 0]))
    for i in range(9):
        assert torch.equal(shuffled[0, i], tiles[0, perms[2, i]])
        assert torch.equal(shuffled[1, i], tiles[1, perms[0, i]])


# ----------------------------------------------------------------------------- context prediction

def test_context_prediction_pairs_have_eight_positions_and_bounded_gap_and_jitter():
    assert len(set(CONTEXT_NEIGHBOURS)) == 8 and (0, 0) not in CONTEXT_NEIGHBOURS
    assert all(max(abs(dy), abs(dx)) == 1 for dy, dx in CONTEXT_NEIGHBOURS)
    coords = torch.stack(torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")) / 32
    images = torch.cat([coords, torch.zeros(1, 32, 32)]).unsqueeze(0).repeat(64, 1, 1, 1)
    patch, gap, jitter = 6, 3, 2
    pairs = patch_pairs(images, patch, gap, jitter, generator=torch.Generator().manual_seed(0))
    assert pairs.centre.shape == (64, 3, 6, 6) and set(pairs.positions.tolist()) == set(range(8))
    offsets = torch.tensor(CONTEXT_NEIGHBOURS)[pairs.positions]
    slack = pairs.neighbour_corners - pairs.centre_corners - (patch + gap) * offsets
    assert int(slack.abs().max()) <= 2 * jitter and int(slack.abs().max()) > 0
    for corners, crops in ((pairs.centre_corners, pairs.centre), (pairs.neighbour_corners, pairs.neighbour)):
        assert int(corners.min()) >= 0 and int(corners.max()) + patch <= 32
        torch.testing.assert_close(crops[:, 0, 0, 0] * 32, corners[:, 0].float())
        torch.testing.assert_close(crops[:, 1, 0, 0] * 32, corners[:, 1].float())
    # without jitter the neighbour is exactly one pitch away
    exact = patch_pairs(images, patch, gap, 0, generator=torch.Generator().manual_seed(1))
    offsets = torch.tensor(CONTEXT_NEIGHBOURS)[exact.positions]
    assert torch.equal(exact.neighbour_corners - exact.centre_corners, (patch + gap) * offsets)
    with pytest.raises(ValueError, match="images"):
        patch_pairs(images, 10, 4, 2)


def test_context_prediction_loss_is_cross_entropy_of_the_fused_towers():
    model = _model("context_prediction").eval()
    batch = seeded_batch(model)
    assert batch["patches"].shape[:3] == (2, 2, 3) and batch["patches"].shape[-1] >= 6
    loss = model.losses(batch)["loss"]
    with torch.no_grad():
        a, b = model(batch["patches"][:, 0]), model(batch["patches"][:, 1])
        expected = F.cross_entropy(model.classifier(torch.cat([a, b], 1)), batch["positions"])
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="patches"):
        model.losses({**batch, "patches": batch["patches"][:, 0]})
    with pytest.raises(ValueError, match="positions"):
        model.losses({**batch, "positions": batch["positions"] + 8})


# ----------------------------------------------------------------------------- context encoders

def test_masked_l2_ignores_unmasked_pixels_and_weights_the_overlap():
    weights = context_encoder_weights(8, 8, overlap=1)
    assert weights[2].tolist() == [0, 0, 10, 10, 10, 10, 0, 0]
    assert weights[3].tolist() == [0, 0, 10, 1, 1, 10, 0, 0]
    assert weights[0].sum() == 0 and int((weights > 0).sum()) == 16
    g = torch.Generator().manual_seed(0)
    prediction, target = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    loss = masked_l2(prediction, target, weights)
    expected = sum(float(weights[y, x]) * float((prediction[b, c, y, x] - target[b, c, y, x]) ** 2)
                   for b in range(2) for c in range(3) for y in range(8) for x in range(8)) / (2 * 3 * 16)
    assert abs(float(loss) - expected) < 1e-5
    changed = torch.where(weights > 0, prediction, torch.rand(2, 3, 8, 8, generator=g) * 100)
    assert float(masked_l2(changed, target, weights)) == pytest.approx(float(loss), rel=1e-6)
    inside = prediction.clone()
    inside[..., 4, 4] += 1
    assert float(masked_l2(inside, target, weights)) > float(loss)
    p64 = prediction.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda p: masked_l2(p, target.double(), weights.double()), (p64,))
    with pytest.raises(ValueError, match="weights"):
        masked_l2(prediction, target, -weights)


def test_mask_centre_erases_the_centre_less_the_overlap():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masked, erased = mask_centre(images, overlap=2)
    assert centre_box(32, 32) == (8, 24, 8, 24)
    assert int(erased.sum()) == 12 * 12 and bool(erased[10:22, 10:22].all())
    assert torch.equal(masked[..., ~erased], images[..., ~erased])
    for c in range(3):
        assert bool((masked[:, c][:, erased] == PATHAK_FILL[c]).all())


def test_context_encoder_loss_ignores_the_context_and_splits_the_players_gradients():
    model = _model("context_encoder").train()
    images = seeded_batch(model)["images"]
    terms = model.losses({"images": images})
    expected_generator = 0.999 * terms["reconstruction"] + 0.001 * terms["adversarial"]
    torch.testing.assert_close(terms["generator_loss"], expected_generator)
    # the reconstruction reads only the centre box: images differing outside it give the same target there
    prediction = model.predict(images)
    weights = context_encoder_weights(32, 32, 4, 10.0)
    other = torch.where(weights > 0, images, torch.rand_like(images))
    torch.testing.assert_close(masked_l2(prediction, images, weights), masked_l2(prediction, other, weights))
    d_params = list(model.discriminator.parameters())
    g_params = [p for n, p in model.named_parameters() if not n.startswith("discriminator.")]
    total_d = torch.autograd.grad(terms["loss"], d_params, retain_graph=True)
    own_d = torch.autograd.grad(terms["discriminator_loss"], d_params, retain_graph=True)
    total_g = torch.autograd.grad(terms["loss"], g_params, retain_graph=True, allow_unused=True)
    own_g = torch.autograd.grad(terms["generator_loss"], g_params, retain_graph=True, allow_unused=True)
    for a, b in zip(total_d, own_d):
        torch.testing.assert_close(a, b)
    for a, b in zip(total_g, own_g):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
    groups = model.parameter_groups()
    assert [g["name"] for g in groups] == ["generator", "discriminator"]
    assert groups[0]["lr"] == pytest.approx(2e-3) and groups[1]["lr"] == pytest.approx(2e-4)
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    gen, disc = gan_bce_losses(real, fake, fake)
    assert float(gen) == pytest.approx(-np.log(1 / (1 + np.exp(1))))
    assert float(disc) == pytest.approx(-np.log(1 / (1 + np.exp(-2))) - np.log(1 - 1 / (1 + np.exp(1))))


# ----------------------------------------------------------------------------- Exemplar-CNN

def test_exemplar_transforms_make_surrogate_classes():
    g = torch.Generator().manual_seed(0)
    patches = torch.rand(3, 3, 16, 16, generator=g) * 0.8 + 0.1
    views, classes = exemplar_transforms(patches, 5, generator=g)
    assert views.shape == (15, 3, 16, 16) and classes.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert float(views.min()) >= 0 and float(views.max()) <= 1
    assert not torch.allclose(views[0], patches[0], atol=0.05)
    # with every range collapsed to the identity, each view is its seed patch
    identity, _ = exemplar_transforms(patches, 2, translation=0.0, scale=(1.0, 1.0), rotation=0.0,
                                      pca_factor=(1.0, 1.0), power=(1.0, 1.0), value_factor=(1.0, 1.0),
                                      value_shift=0.0, hue_shift=0.0)
    torch.testing.assert_close(identity, patches.repeat_interleave(2, 0), atol=1e-4, rtol=0)
    model = _model("exemplar_cnn").eval()
    batch = seeded_batch(model)
    assert batch["views"].shape[0] == 8 and batch["classes"].tolist() == [0] * 4 + [1] * 4
    loss = model.losses(batch)["loss"]
    with torch.no_grad():
        expected = F.cross_entropy(model.classifier(model(batch["views"])), batch["classes"])
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="classes"):
        model.losses({**batch, "classes": batch["classes"][:3]})
    with pytest.raises(TypeError, match="classes"):
        model.losses({**batch, "classes": batch["classes"].float()})


# ----------------------------------------------------------------------------- BigBiGAN

def test_bigbigan_losses_have_the_published_signs():
    real = torch.tensor([[1.0, 2.0, 3.0], [0.5, -0.5, 0.0]], requires_grad=True)
    fake = torch.tensor([[0.5, 0.0, -1.0], [-3.0, 2.0, 0.0]], requires_grad=True)
    eg = bigbigan_generator_loss(real, fake)
    # mean over real of s_x + s_z + s_xz minus the same over fake: (6 + 0) / 2 - (-0.5 - 1) / 2
    assert float(eg.detach()) == pytest.approx(3.75)
    d = bigbigan_discriminator_loss(real, fake)
    # real hinges max(0, 1 - s): [0, 0, 0] and [0.5, 1.5, 1]; fake max(0, 1 + s): [1.5, 1, 0] and [0, 3, 1]
    assert float(d.detach()) == pytest.approx((0 + 3.0) / 2 + (2.5 + 4.0) / 2)
    g_real, g_fake = torch.autograd.grad(eg, (real, fake))
    assert bool((g_real == 0.5).all()) and bool((g_fake == -0.5).all())  # E, G push real down, fake up
    d_real, d_fake = torch.autograd.grad(d, (real, fake))
    assert d_real.tolist() == [[0, 0, 0], [-0.5, -0.5, -0.5]]  # D pushes real scores up where below 1
    assert d_fake.tolist() == [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]  # and fake scores down where above -1
    with pytest.raises(ValueError, match="real_scores"):
        bigbigan_generator_loss(real[:, :2], fake)


def test_bigbigan_gradients_reach_each_player_from_its_own_loss_only():
    model = _model("bigbigan").train()
    batch = seeded_batch(model)
    terms = model.losses(batch)
    torch.testing.assert_close(terms["loss"], terms["encoder_generator_loss"] + terms["discriminator_loss"])
    d_params = list(model.discriminator.parameters())
    eg_params = [p for n, p in model.named_parameters() if not n.startswith("discriminator.")]
    for params, own in ((d_params, "discriminator_loss"), (eg_params, "encoder_generator_loss")):
        total = torch.autograd.grad(terms["loss"], params, retain_graph=True, allow_unused=True)
        alone = torch.autograd.grad(terms[own], params, retain_graph=True, allow_unused=True)
        for a, b in zip(total, alone):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b)
    assert model.encode(batch["images"]).shape == (2, 8)
    with pytest.raises(ValueError, match="encoder_noise"):
        model.losses({**batch, "encoder_noise": batch["encoder_noise"][:, :3]})
    with pytest.raises(ValueError, match="z"):
        model.losses({**batch, "z": batch["z"][0]})


# ----------------------------------------------------------------------------- bad input

def test_bad_input_is_named():
    with pytest.raises(ValueError, match="images"):
        rotations(torch.rand(1, 3, 4, 5))
    with pytest.raises(TypeError, match="images"):
        rotations(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="n must be"):
        jigsaw_permutations(25, tiles=4)
    with pytest.raises(ValueError, match="candidates"):
        jigsaw_permutations(2, candidates=torch.tensor([[0, 0, 1], [1, 2, 0]]))
    model = _model("jigsaw")
    batch = seeded_batch(model)
    with pytest.raises(TypeError, match="permutations"):
        model.losses({**batch, "permutations": batch["permutations"].float()})
    with pytest.raises(ValueError, match="permutations"):
        model.losses({**batch, "permutations": batch["permutations"] + 10})
    with pytest.raises(ValueError, match="tiles"):
        model.losses({**batch, "tiles": batch["tiles"][:, :8]})
    bad = batch["tiles"].clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="tiles"):
        model.losses({**batch, "tiles": bad})
    rot = _model("rotnet")
    images = seeded_batch(rot)["images"].clone()
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="images"):
        rot.losses({"images": images})
    with pytest.raises(ValueError, match="batch lacks"):
        _model("exemplar_cnn").losses({"images": images})


# ----------------------------------------------------------------------------- training smoke

@pytest.mark.parametrize("key", ["rotnet", "context_prediction", "jigsaw", "exemplar_cnn", "context_encoder"])
def test_loss_falls_over_twenty_steps(key):
    model = _model(key)
    totals = train_losses(model, seeded_batch(model), steps=20, lr=1e-3)
    assert totals[-1] < totals[0], totals


def test_bigbigan_each_player_lowers_its_own_loss():
    model = _model("bigbigan")
    batch = seeded_batch(model)
    for group, term in ((1, "discriminator_loss"), (0, "encoder_generator_loss")):
        optimizer = torch.optim.Adam([model.parameter_groups()[group]], lr=1e-3)
        values = []
        for _ in range(20):
            loss = model.losses(batch)[term]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            values.append(float(loss.detach()))
        assert values[-1] < values[0], (term, values)
