"""Two gloo processes each holding part of the batch give the codes of one
process holding all of it (SwAV's multi-GPU sums over samples)."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import wsss_ext
from wsss_ext.distributed import shutdown

SPLIT = (37, 63)  # unequal shards on purpose


def _scores():
    return torch.randn(sum(SPLIT), 23, generator=torch.Generator().manual_seed(11), dtype=torch.float64)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_main(rank, world_size, port, out_dir, kwargs):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        shard = _scores().split(SPLIT)[rank]
        codes = wsss_ext.sinkhorn_knopp(shard, process_group=dist.group.WORLD, **kwargs)
        torch.save(codes, f"{out_dir}/rank{rank}.pt")
    finally:
        shutdown()


@pytest.mark.parametrize("kwargs", [dict(n_iters=3), dict(epsilon=0.2, tol=1e-10, max_iters=5000)],
                         ids=["swav", "converged"])
def test_two_ranks_equal_one_process_on_the_whole_batch(tmp_path, kwargs):
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path), kwargs), nprocs=2, join=True)
    gathered = torch.cat([torch.load(tmp_path / f"rank{r}.pt") for r in range(2)])
    expected = wsss_ext.sinkhorn_knopp(_scores(), **kwargs)
    torch.testing.assert_close(gathered, expected, rtol=1e-10, atol=1e-12)
    # and not merely each shard balanced on its own
    alone = torch.cat([wsss_ext.sinkhorn_knopp(s, **kwargs) for s in _scores().split(SPLIT)])
    assert (alone - expected).abs().max() > 1e-4
