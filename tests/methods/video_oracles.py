"""Independent oracles of the video methods' read-outs, written from the
papers with unfold + softmax at tiny sizes (the memory-hungry way the
original code computes them): MAST's zero-padded window (an out-of-frame tap
scores 0 and carries label 0), CorrFlow's excluded padding (score -1e10,
labels replicate-padded) and the global pointer of Vondrick et al."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def window_oracle(query, keys, values, radius, temperature=1.0, border="zero"):
    """One softmax over len(keys) references x (2r+1)^2 taps.

    query B x C x h x w; keys, values: lists of B x C x h x w / B x L x h x w."""
    side = 2 * radius + 1
    b, c, h, w = query.shape
    scores, labels = [], []
    for key, value in zip(keys, values):
        k = F.unfold(key, side, padding=radius).view(b, c, side * side, h, w)
        score = (query.unsqueeze(2) * k).sum(1) / temperature
        if border == "exclude":
            inside = F.unfold(torch.ones_like(key[:, :1]), side, padding=radius).view(b, side * side, h, w)
            score = score.masked_fill(inside == 0, -1e10)  # CorrFlow: corr[corr == 0] = -1e10
            padded = F.pad(value, (radius,) * 4, mode="replicate")
            v = F.unfold(padded, side).view(b, value.shape[1], side * side, h, w)
        else:
            v = F.unfold(value, side, padding=radius).view(b, value.shape[1], side * side, h, w)
        scores.append(score)
        labels.append(v)
    weights = torch.softmax(torch.cat(scores, 1), dim=1)
    return (torch.cat(labels, 2) * weights.unsqueeze(1)).sum(2)


def global_oracle(query, keys, values, temperature=1.0):
    """Softmax over every pixel of every reference: query B x C x h x w, keys
    B x R x C x h x w, values B x R x L x h x w -> B x L x h x w."""
    b, c, h, w = query.shape
    q = query.flatten(2)                                      # B x C x N
    k = keys.permute(0, 2, 1, 3, 4).reshape(b, c, -1)         # B x C x R N
    v = values.permute(0, 2, 1, 3, 4).reshape(b, values.shape[2], -1)
    attention = torch.softmax(torch.einsum("bcm,bcn->bmn", k, q) / temperature, dim=1)  # over reference pixels
    return torch.einsum("blm,bmn->bln", v, attention).view(b, -1, h, w)


def use_position_features(model, dim=64, scale=10.0, seed=0):
    """Replace ``model.encode`` by fixed, sharp per-position features (unit
    random vectors times ``scale``, ignoring the image): every frame of a still
    video then matches itself, so a correct tracking loop is the identity."""
    g = torch.Generator().manual_seed(seed)
    table = F.normalize(torch.randn(dim, 64, 64, generator=g), dim=0) * scale

    def encode(images):
        h, w = images.shape[-2] // model.STRIDE, images.shape[-1] // model.STRIDE
        return table[:, :h, :w].expand(images.shape[0], -1, -1, -1).to(images.dtype)

    model.encode = encode
    return model
