"""The synthetic moving-objects videos (wsss_app.pipeline.synthetic_video):
deterministic, one seed per video, masks that name every object in the first
frame and follow smooth motion, textures that move with the objects."""

import numpy as np
import pytest
import torch

from wsss_app.pipeline.synthetic_video import make_videos


def test_videos_are_deterministic_and_each_has_its_own_seed():
    first, again = make_videos(3, 6, 32, seed=5, min_visible=10), make_videos(3, 6, 32, seed=5, min_visible=10)
    assert torch.equal(first.frames, again.frames) and torch.equal(first.masks, again.masks)
    longer = make_videos(5, 6, 32, seed=5, min_visible=10)
    assert torch.equal(longer.frames[:3], first.frames) and torch.equal(longer.masks[:3], first.masks)
    assert not torch.equal(make_videos(3, 6, 32, seed=6, min_visible=10).frames, first.frames)
    assert first.frames.shape == (3, 6, 3, 32, 32) and first.frames.dtype == torch.uint8
    assert first.masks.shape == (3, 6, 32, 32) and first.masks.dtype == torch.int64


def test_masks_name_every_object_in_the_first_frame_and_nothing_else():
    videos = make_videos(8, 8, 48, seed=0, max_objects=3, min_visible=25)
    for masks, k in zip(videos.masks, videos.n_objects.tolist()):
        assert 1 <= k <= 3
        assert set(masks.unique().tolist()) <= set(range(k + 1))
        for label in range(1, k + 1):
            assert (masks[0] == label).sum() >= 25


def test_objects_move_smoothly_and_carry_their_texture():
    videos = make_videos(6, 10, 64, seed=1, max_objects=1)
    moved = []
    for frames, masks in zip(videos.frames, videos.masks):
        centroids = []
        for t in range(10):
            ys, xs = torch.nonzero(masks[t] == 1, as_tuple=True)
            if len(ys):
                centroids.append((ys.float().mean().item(), xs.float().mean().item()))
            if t and (masks[t] == 1).any() and (masks[t - 1] == 1).any():
                inter = ((masks[t] == 1) & (masks[t - 1] == 1)).sum().item()
                union = ((masks[t] == 1) | (masks[t - 1] == 1)).sum().item()
                assert inter / union > 0.5  # at most ~2 pixels a frame
        steps = np.diff(np.array(centroids), axis=0)
        moved.append(np.hypot(*steps.T).mean())
        # textured, not flat: the object's pixels vary more than sensor noise
        inside = frames[0].float()[:, masks[0] == 1]
        assert inside.std(1).max() > 12
    assert min(moved) > 0.3 and max(moved) < 3.0


def test_objects_occlude_one_another_somewhere():
    videos = make_videos(12, 12, 64, seed=2, max_objects=3)
    # Two objects' masks side by side (a pixel of one next to a pixel of the other) only where one
    # overlaps the other: the front one's edge cuts the back one.
    masks = videos.masks
    right = (masks[..., :, 1:] > 0) & (masks[..., :, :-1] > 0) & (masks[..., :, 1:] != masks[..., :, :-1])
    down = (masks[..., 1:, :] > 0) & (masks[..., :-1, :] > 0) & (masks[..., 1:, :] != masks[..., :-1, :])
    overlapping = right.flatten(2).any(2) | down.flatten(2).any(2)  # videos x frames
    assert overlapping.any()
    assert not overlapping[videos.n_objects == 1].any()


def test_bad_arguments():
    for kwargs, name in ((dict(n_videos=-1), "n_videos"), (dict(n_videos=1, n_frames=0), "n_frames"),
                         (dict(n_videos=1, size=4), "size"), (dict(n_videos=1, max_objects=0), "max_objects"),
                         (dict(n_videos=1, size=2.5), "size"), (dict(n_videos=1, max_objects=300), "max_objects")):
        with pytest.raises(ValueError, match=name):
            make_videos(**kwargs)
    with pytest.raises(ValueError, match="could not place"):
        make_videos(1, 2, 16, min_visible=400)
    assert len(make_videos(0)) == 0
