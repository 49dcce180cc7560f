"""Puzzle-CAM's puzzle module (Jo & Yu, ICIP 2021; PuzzleCAM ``core/puzzle_utils.py``):
cut each image into a k x k grid of tiles that go through the classifier as
images of their own, and put their CAMs back together.

Tile layout (the repository's): for ``n_pieces = k * k`` the pieces of an
image are numbered row-major, ``p = r * k + c`` for grid row ``r`` and column
``c``, and the output is *piece-major*: ``tiles[p * B + b]`` is piece ``p``
of image ``b``. For 4 pieces::

    +---+---+
    | 0 | 1 |      tiles = [piece 0 of images 0..B-1, piece 1 of images 0..B-1,
    +---+---+               piece 2 of images 0..B-1, piece 3 of images 0..B-1]
    | 2 | 3 |
    +---+---+

so ``puzzle_merge(puzzle_tile(x, n), n) == x`` exactly, and the merge of any
per-tile map (CAMs at the backbone's stride) is the map of the whole grid.
"""

from __future__ import annotations

import math

from torch import Tensor

from python_models._checks import check_int

__all__ = ["puzzle_merge", "puzzle_tile"]


def _side(n_pieces: object) -> int:
    n_pieces = check_int(n_pieces, "n_pieces", minimum=1)
    side = math.isqrt(n_pieces)
    if side * side != n_pieces:
        raise ValueError(f"n_pieces must be a square (1, 4, 9, ...) to make a k x k grid, got {n_pieces}")
    return side


def _rank4(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N x C x H x W), got shape {tuple(value.shape)}")
    return value


def puzzle_tile(images: Tensor, n_pieces: int = 4) -> Tensor:
    """Cut each image into a k x k grid (``n_pieces = k * k``) of equal tiles.

    Args:
        images: B x C x H x W, any dtype (images, features or maps); H and W
            divisible by k.
        n_pieces: a square; 4 (a 2 x 2 grid) in Puzzle-CAM.

    Returns:
        (n_pieces * B) x C x H/k x W/k, piece-major: ``out[p * B + b]`` is the
        tile of image ``b`` in grid row ``p // k``, column ``p % k``.

    Raises:
        ValueError: ``n_pieces`` not a square, or H, W not divisible by k.

    Example:
        >>> import torch
        >>> from python_models.augment import puzzle_tile
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> puzzle_tile(x)[:, 0]
        tensor([[[ 0.,  1.],
                 [ 4.,  5.]],
        <BLANKLINE>
                [[ 2.,  3.],
                 [ 6.,  7.]],
        <BLANKLINE>
                [[ 8.,  9.],
                 [12., 13.]],
        <BLANKLINE>
                [[10., 11.],
                 [14., 15.]]])
    """
    images = _rank4(images, "images")
    side = _side(n_pieces)
    batch, channels, height, width = images.shape
    if height % side or width % side:
        raise ValueError(f"images' height and width must be divisible by {side} to cut {side * side} "
                         f"pieces, got {height} x {width}")
    h, w = height // side, width // side
    grid = images.reshape(batch, channels, side, h, side, w)
    return grid.permute(2, 4, 0, 1, 3, 5).reshape(side * side * batch, channels, h, w)


def puzzle_merge(tiles: Tensor, n_pieces: int = 4) -> Tensor:
    """Put tiles laid out as :func:`puzzle_tile` makes them back into whole maps.

    Args:
        tiles: (n_pieces * B) x C x h x w, piece-major (any per-tile map: the
            tiles themselves or the CAMs computed from them).
        n_pieces: a square k * k.

    Returns:
        B x C x k*h x k*w; ``puzzle_merge(puzzle_tile(x, n), n)`` equals ``x``.

    Raises:
        ValueError: ``n_pieces`` not a square, or the tile count not a multiple of it.
    """
    tiles = _rank4(tiles, "tiles")
    side = _side(n_pieces)
    count, channels, h, w = tiles.shape
    if count % (side * side):
        raise ValueError(f"tiles must hold n_pieces * B = {side * side} * B maps, got {count}")
    batch = count // (side * side)
    grid = tiles.reshape(side, side, batch, channels, h, w)
    return grid.permute(2, 3, 0, 4, 1, 5).reshape(batch, channels, side * h, side * w)
