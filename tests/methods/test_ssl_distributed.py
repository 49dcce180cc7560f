"""SwAV's codes and SeLa's labels from two gloo processes, each holding part
of the batch (or data set), equal those of one process holding all of it."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from python_models import create
from python_models.losses import swav_codes
from wsss_ext.distributed import shutdown

SPLIT = (3, 5)  # unequal shards on purpose
QUEUE_SPLIT = (4, 6)
K = 7
SWAV = dict(backbone="tiny", num_classes=K, nmb_crops=(2, 2), hidden_mlp=32, feat_dim=8)
SELA = dict(backbone="tiny", num_classes=K, heads=2)
SELA_SPLIT = (37, 63)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _images() -> torch.Tensor:
    return torch.rand(sum(SPLIT), 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _scores(n, seed) -> torch.Tensor:
    return torch.randn(n, K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).tanh()


def _log_probs() -> torch.Tensor:
    """2 heads x 100 samples: the first shard leans to cluster 0, so shards alone label differently."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, sum(SELA_SPLIT), K, generator=g, dtype=torch.float64)
    logits[:, : SELA_SPLIT[0], 0] += 2.0
    return torch.log_softmax(logits, -1)


def _swav(process_group=None):
    torch.manual_seed(0)
    return create("swav", **SWAV, process_group=process_group).eval()


def _sela(process_group=None):
    torch.manual_seed(0)
    return create("sela", **SELA, process_group=process_group)


def _rank_main(rank, world_size, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        group = dist.group.WORLD
        with torch.no_grad():
            model = _swav(group)
            _, scores = model(_images().split(SPLIT)[rank])
            codes = model.assign(scores)
            queued = swav_codes(_scores(sum(SPLIT), 1).split(SPLIT)[rank],
                                _scores(sum(QUEUE_SPLIT), 2).split(QUEUE_SPLIT)[rank], process_group=group)
        labels = _sela(group).self_label(_log_probs().split(SELA_SPLIT, dim=1)[rank])
        torch.save({"codes": codes, "queued": queued, "labels": labels}, f"{out_dir}/rank{rank}.pt")
    finally:
        shutdown()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ssl_distributed")
    mp.spawn(_rank_main, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    results = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    return {key: torch.cat([r[key] for r in results]) for key in results[0]}


def test_swav_codes_of_two_ranks_equal_one_process(ranks):
    with torch.no_grad():
        _, scores = _swav()(_images())
        expected = _swav().assign(scores)
    torch.testing.assert_close(ranks["codes"], expected, rtol=1e-5, atol=1e-6)
    alone = torch.cat([_swav().assign(s) for s in scores.split(SPLIT)])
    assert (alone - expected).abs().max() > 1e-4  # not merely each shard balanced alone


def test_swav_codes_with_per_rank_queues_equal_one_process(ranks):
    # one process: both queues and both batches; the batch rows come last, as on each rank
    expected = swav_codes(_scores(sum(SPLIT), 1), _scores(sum(QUEUE_SPLIT), 2))
    torch.testing.assert_close(ranks["queued"], expected, rtol=1e-10, atol=1e-12)


def test_sela_labels_of_two_ranks_equal_one_process(ranks):
    expected = _sela().self_label(_log_probs())
    assert ranks["labels"].shape == (sum(SELA_SPLIT), 2)
    assert torch.equal(ranks["labels"], expected)
    alone = torch.cat([_sela().self_label(s) for s in _log_probs().split(SELA_SPLIT, dim=1)])
    assert not torch.equal(alone, expected)
