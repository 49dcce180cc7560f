"""Benchmark of the self-supervised methods' assignment steps (issue 15),
run through the methods' own functions, against the papers' recipes
(:mod:`wsss_ext.reference`) run the same way, on the same inputs.

Cases:

- ``swav``: one SwAV step's codes, 4096 crops x 3000 prototypes (batch 64 x
  64 GPUs), :meth:`python_models.methods.SwAV.assign` (``sinkhorn_knopp``,
  eps 0.05, 3 iterations) against SwAV's exp-then-normalise recipe
  (``reference.sinkhorn_swav``), float32.
- ``swav_queue``: the small-batch recipe, 256 crops with a full 3840-row
  queue re-scored by the current prototypes and prepended.
- ``swav_autocast_<dtype>``: the scores produced under ``torch.autocast``
  (bfloat16 and float16) and both assignments called inside it.
  Reported for each: whether the codes are finite and their largest
  difference from the float64 codes. ``swav_recipe_half_input`` is the
  recipe on the half-precision scores outside autocast (where
  ``exp(1 / 0.05)`` exceeds float16's range).
- ``swav_unnormalised``: embeddings left without SwAV's L2 normalisation
  (norm 6): the recipe's ``exp(scores / eps)`` overflows even in float32.
- ``sela``: SeLa's label step over a data set, 100000 samples x 3000
  clusters, lambda 25, :meth:`python_models.methods.SeLa.self_label`
  (float32, the method's tol) against SeLa's scaling iteration in float64
  with SeLa's own stopping rule, then argmax; label agreement and cluster
  balance are reported, and the float32 recipe (which underflows).

``--quick`` shrinks every N (a smoke test, not results).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from common import measure, ratios

from python_models import create
from wsss_ext import reference

KERNEL = "ssl_assignment"
FEAT_DIM = 128
K = 3000
SWAV_BATCH = 4096
SWAV_SMALL_BATCH, SWAV_QUEUE = 256, 3840
SELA_N = 100_000
QUICK = dict(swav=512, small=64, queue=512, sela=4096)


def _progress(case: str, what: str) -> None:
    print(f"  [{KERNEL}/{case}] {what}", flush=True)


def _swav(device, **overrides):
    torch.manual_seed(0)
    # Only the prototypes (and queue) are used: a tiny backbone keeps the model small.
    return create("swav", backbone="tiny", num_classes=K, feat_dim=FEAT_DIM, hidden_mlp=64,
                  **overrides).to(device).eval()


def _embeddings(n, device, model, seed=0, norm=1.0):
    """Embeddings as a trained network gives them: each near one prototype
    (cosine ~0.9), scaled to ``norm`` (SwAV: 1)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    prototypes = model.prototypes.weight.detach().cpu()
    nearest = torch.randint(prototypes.shape[0], (n,), generator=g)
    z = F.normalize(prototypes[nearest] + 0.03 * torch.randn(n, FEAT_DIM, generator=g), dim=1)
    return (norm * z).to(device)


def _max_diff(a, b):
    return float((a.double() - b.double()).abs().max())


def _record(case, shape, params, ours, references, ours_out, ref_out, extra=None):
    record = {"kernel": KERNEL, "case": case, "shape": list(shape), "params": params, "ours": ours,
              "references": references,
              "ratios": {name: ratios(ours, ref) for name, ref in references.items() if "median_ms" in ref},
              "max_abs_diff": _max_diff(ours_out, ref_out) if torch.isfinite(ref_out).all() else None}
    record.update(extra or {})
    return record


def _swav_case(case, n, device, queue=0, norm=1.0):
    model = _swav(device, queue_length=queue, epoch_queue_starts=0)
    scores = model.prototype_scores(_embeddings(n, device, model, norm=norm))
    queue_scores = None
    if queue:  # a full queue (memory.Queue), written as after_step writes it
        model.queues[0].stage(_embeddings(queue, device, model, seed=1))
        model.queues[0].commit()
        queue_scores = model.prototype_scores(model.queues[0].tensor())
    _progress(case, f"SwAV.assign {n}x{K}" + (f" + queue {queue}" if queue else ""))
    ours, codes = measure(lambda: model.assign(scores, 0 if queue else None), device=device)

    def recipe():
        full = scores if queue_scores is None else torch.cat([queue_scores, scores])
        return reference.sinkhorn_swav(full, 0.05, 3)[-n:]

    _progress(case, "reference.sinkhorn_swav")
    ref, ref_codes = measure(recipe, device=device)
    finite = {"ours_finite": bool(torch.isfinite(codes).all()), "reference_finite": bool(torch.isfinite(ref_codes).all())}
    return _record(case, (n + queue, K), {"epsilon": 0.05, "n_iters": 3, "dtype": "float32", "queue": queue,
                                          "embedding_norm": norm},
                   ours, {"swav_recipe": ref}, codes, ref_codes, finite)


def _autocast_cases(n, device):
    dtypes = [torch.bfloat16, torch.float16]
    records = []
    model = _swav(device)
    z = _embeddings(n, device, model)
    exact = model.assign(model.prototype_scores(z).double())
    for dtype in dtypes:
        case = f"swav_autocast_{str(dtype).split('.')[-1]}"
        with torch.autocast(device.type, dtype=dtype):
            scores = model.prototype_scores(z)
            _progress(case, f"SwAV.assign on {scores.dtype} scores under autocast")
            ours, codes = measure(lambda s=scores: model.assign(s), device=device)
            ref, ref_codes = measure(lambda s=scores: reference.sinkhorn_swav(s, 0.05, 3), device=device)
        half_input = reference.sinkhorn_swav(scores, 0.05, 3)  # outside autocast, on the half scores
        records.append(_record(
            case, (n, K), {"epsilon": 0.05, "n_iters": 3, "scores_dtype": str(scores.dtype)},
            ours, {"swav_recipe": ref}, codes, ref_codes,
            {"ours_finite": bool(torch.isfinite(codes).all()),
             "ours_max_abs_diff_vs_float64": _max_diff(codes, exact),
             "reference_finite": bool(torch.isfinite(ref_codes).all()),
             "reference_max_abs_diff_vs_float64": (_max_diff(ref_codes, exact)
                                                   if torch.isfinite(ref_codes).all() else None),
             "swav_recipe_half_input_finite": bool(torch.isfinite(half_input).all())}))
    return records


def _balance(labels, k):
    counts = torch.bincount(labels, minlength=k)
    return {"max_cluster_over_mean": float(counts.max()) / (labels.numel() / k),
            "empty_clusters": int((counts == 0).sum())}


def _sela_case(n, device):
    case = "sela"
    torch.manual_seed(0)
    model = create("sela", backbone="tiny", num_classes=K, heads=1).to(device)
    logits = torch.randn(n, K, device=device).mul_(3)
    log_probs = torch.log_softmax(logits, 1)
    del logits
    _progress(case, f"SeLa.self_label {n}x{K} (float32, tol {model.config.sinkhorn_tol:g})")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        ours, labels = measure(lambda: model.self_label(log_probs), device=device, warmup=0, repeat=1)
    ours["converged"] = not caught
    ours.update(_balance(labels, K))
    log_probs64 = log_probs.double()
    _progress(case, "reference.sinkhorn_sela + argmax (float64, SeLa's rule)")

    def recipe(log_probs64=log_probs64):
        codes, iterations = reference.sinkhorn_sela(log_probs64, 1 / 25)
        return codes.argmax(1), iterations

    ref, (ref_labels, iterations) = measure(recipe, device=device, warmup=0, repeat=1)
    del log_probs64, recipe
    ref["iterations"] = iterations
    ref.update(_balance(ref_labels, K))
    _progress(case, "reference.sinkhorn_sela in float32 (underflow check, 20 iterations)")
    codes32, _ = reference.sinkhorn_sela(log_probs, 1 / 25, max_iters=20)
    recipe32_finite = bool(torch.isfinite(codes32).all())
    del codes32
    return {"kernel": KERNEL, "case": case, "shape": [n, K],
            "params": {"lambda": 25, "tol": model.config.sinkhorn_tol, "dtype": "float32",
                       "reference_dtype": "float64", "reference_rule": "sum |c/c_new - 1| < 0.1"},
            "ours": ours, "references": {"sela_float64": ref},
            "ratios": {"sela_float64": ratios(ours, ref)},
            "max_abs_diff": None,
            "label_agreement": float((labels == ref_labels).float().mean()),
            "sela_recipe_float32_finite": recipe32_finite}


def run(device: str, quick: bool) -> list[dict]:
    """Every case on ``device``; ``quick`` runs them at much smaller N."""
    device = torch.device(device)
    sizes = QUICK if quick else dict(swav=SWAV_BATCH, small=SWAV_SMALL_BATCH, queue=SWAV_QUEUE, sela=SELA_N)
    with torch.no_grad():
        records = [
            _swav_case("swav", sizes["swav"], device),
            _swav_case("swav_queue", sizes["small"], device, queue=sizes["queue"]),
            *_autocast_cases(sizes["swav"], device),
            _swav_case("swav_unnormalised", sizes["swav"], device, norm=6.0),
            _sela_case(sizes["sela"], device),
        ]
    return records


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.device, args.quick), indent=1, default=str))
