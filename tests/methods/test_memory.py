"""python_models.memory: the FIFO queue, NPID's bank, the EMA teacher with its
cosine schedule and DINO's centre, on hand-computed cases."""

import copy
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from python_models.memory import Centre, EMATeacher, MemoryBank, Queue, cosine_momentum
from wsss_ext.distributed import shutdown


def _rows(*values, dim=2):
    return torch.tensor([[float(v)] * dim for v in values])


# ----------------------------------------------------------------------------- Queue

def test_queue_fifo_by_hand_with_wrap_around():
    q = Queue(4, 2)
    assert q.tensor().eq(0).all() and int(q.ptr) == 0 and not q.is_full
    q.stage(_rows(1, 2, 3))
    q.commit()
    assert q.tensor()[:, 0].tolist() == [1, 2, 3, 0] and int(q.ptr) == 3 and int(q.filled) == 3
    q.stage(_rows(4, 5))  # wraps: 4 at row 3, 5 overwrites the oldest (1) at row 0
    q.commit()
    assert q.tensor()[:, 0].tolist() == [5, 2, 3, 4] and int(q.ptr) == 1 and q.is_full
    q.stage(_rows(6, 7, 8, 9, 10, 11))  # more than size: the last 4 survive, newest before ptr
    q.commit()
    assert int(q.ptr) == (1 + 6) % 4 == 3
    assert q.tensor()[:, 0].tolist() == [9, 10, 11, 8]


def _fifo_oracle(size, batches):
    rows, ptr = [0.0] * size, 0
    for batch in batches:
        for value in batch:
            rows[ptr] = value
            ptr = (ptr + 1) % size
    return rows, ptr


def test_queue_staged_rows_commit_in_order_and_nothing_changes_before_commit():
    q = Queue(5, 3)
    batches = [[1, 2], [3], [4, 5, 6]]
    before = {k: v.clone() for k, v in q.state_dict().items()}
    for batch in batches:  # gradient accumulation: three micro-batches, one commit
        q.stage(_rows(*batch, dim=3))
    assert q.staged == 6
    for key, value in q.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert set(q.state_dict()) == {"queue", "ptr", "filled"}  # the stage is not state
    q.commit()
    expected, ptr = _fifo_oracle(5, batches)
    assert q.tensor()[:, 0].tolist() == expected == [6, 2, 3, 4, 5] and int(q.ptr) == ptr == 1
    assert q.staged == 0
    q.commit()  # an empty stage writes nothing
    assert q.tensor()[:, 0].tolist() == expected


def test_queue_random_streams_match_the_oracle():
    gen = torch.Generator().manual_seed(0)
    q = Queue(7, 1)
    batches = []
    for _ in range(6):
        n = int(torch.randint(0, 10, (1,), generator=gen))
        batch = torch.randn(n, generator=gen).tolist()
        batches.append(batch)
        q.stage(torch.tensor(batch).reshape(-1, 1))
        q.commit()
    expected, ptr = _fifo_oracle(7, batches)
    torch.testing.assert_close(q.tensor()[:, 0], torch.tensor(expected))
    assert int(q.ptr) == ptr


def test_queue_stage_is_detached_clear_stage_and_tensor_is_a_copy():
    q = Queue(3, 2)
    x = torch.ones(2, 2, requires_grad=True)
    q.stage(x * 2)
    q.clear_stage()
    q.commit()
    assert q.tensor().eq(0).all()
    q.stage(x * 2)
    kept = q.tensor()
    q.commit()
    assert not q.queue.requires_grad and kept.eq(0).all() and q.tensor()[:2].eq(2).all()


def test_queue_unit_init_and_state_dict_round_trip():
    q = Queue(6, 4, init="unit", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(q.queue.norm(dim=1), torch.ones(6))
    assert q.is_full
    q.stage(torch.randn(2, 4))
    q.commit()
    other = Queue(6, 4)
    other.load_state_dict(q.state_dict())
    assert torch.equal(other.tensor(), q.tensor()) and int(other.ptr) == 2 and other.is_full


def test_queue_bad_input():
    with pytest.raises(ValueError, match="batch_size"):
        Queue(10, 2, batch_size=4)
    with pytest.raises(ValueError, match="size"):
        Queue(0, 2)
    with pytest.raises(ValueError, match="init"):
        Queue(4, 2, init="ones")
    q = Queue(8, 2, batch_size=4)
    with pytest.raises(ValueError, match="rows"):
        q.stage(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="rows"):
        q.stage(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="rows"):
        q.stage(torch.zeros(4))
    with pytest.raises(TypeError, match="rows"):
        q.stage(torch.zeros(4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="rows"):
        q.stage(torch.full((4, 2), float("nan")))


# ----------------------------------------------------------------------------- MemoryBank

def test_bank_rows_start_as_unit_vectors():
    bank = MemoryBank(5, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bank.tensor().norm(dim=1), torch.ones(5))


def test_bank_momentum_update_and_renormalisation_by_hand():
    bank = MemoryBank(3, 2, momentum=0.5)
    bank.bank[:] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    before = bank.tensor()
    bank.stage(torch.tensor([0, 2]), torch.tensor([[0.0, 1.0], [0.6, 0.8]]))
    assert torch.equal(bank.tensor(), before)  # nothing before commit
    bank.commit()
    s = 1 / math.sqrt(2)  # (0.5 [1, 0] + 0.5 [0, 1]) / |.| = [s, s]
    torch.testing.assert_close(bank.tensor(), torch.tensor([[s, s], [0.0, 1.0], [0.6, 0.8]]))
    # m = 0.25: w = 0.25 [s, s] + 0.75 [-1, 0], then normalised
    bank2 = MemoryBank(3, 2, momentum=0.25)
    bank2.load_state_dict(bank.state_dict())
    bank2.stage(torch.tensor([0]), torch.tensor([[-1.0, 0.0]]))
    bank2.commit()
    w = torch.tensor([0.25 * s - 0.75, 0.25 * s])
    torch.testing.assert_close(bank2.tensor()[0], w / w.norm())


def test_bank_repeated_index_is_moved_twice_in_order():
    bank = MemoryBank(2, 2, momentum=0.5)
    bank.bank[:] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank.stage(torch.tensor([0]), torch.tensor([[0.0, 1.0]]))
    bank.stage(torch.tensor([0, 1]), torch.tensor([[-1.0, 0.0], [0.0, 1.0]]))
    bank.commit()
    first = F.normalize(torch.tensor([0.5, 0.5]), dim=0)
    second = F.normalize(0.5 * first + 0.5 * torch.tensor([-1.0, 0.0]), dim=0)
    torch.testing.assert_close(bank.tensor(), torch.stack([second, torch.tensor([0.0, 1.0])]))


def test_bank_state_dict_and_bad_input():
    bank = MemoryBank(4, 3, generator=torch.Generator().manual_seed(2))
    other = MemoryBank(4, 3)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.tensor(), bank.tensor()) and set(bank.state_dict()) == {"bank"}
    with pytest.raises(ValueError, match="momentum"):
        MemoryBank(4, 3, momentum=1.5)
    with pytest.raises(ValueError, match="momentum"):
        MemoryBank(4, 3, momentum=-0.1)
    with pytest.raises(TypeError, match="indices"):
        bank.stage(torch.tensor([0.0]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="indices"):
        bank.stage(torch.tensor([4]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="indices"):
        bank.stage(torch.tensor([[0]]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="values"):
        bank.stage(torch.tensor([0, 1]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="values"):
        bank.stage(torch.tensor([0]), torch.zeros(1, 2))


# ----------------------------------------------------------------------------- EMATeacher

def _student():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_cosine_schedule_values():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert cosine_momentum(25, 100, 0.9, 0.95) == pytest.approx(0.95 - 0.05 * (math.cos(math.pi / 4) + 1) / 2)
    teacher = EMATeacher(_student(), momentum=0.99, final_momentum=0.99)
    assert teacher.momentum_at(37, 100) == pytest.approx(0.99)  # constant (MoCo)
    with pytest.raises(ValueError, match="step"):
        cosine_momentum(101, 100)
    with pytest.raises(ValueError, match="max_steps"):
        cosine_momentum(0, 0)


def test_teacher_is_a_frozen_copy_and_gets_no_gradient():
    student = _student()
    teacher = EMATeacher(student)
    for (name, s), (tname, t) in zip(student.named_parameters(), teacher.module.named_parameters()):
        assert name == tname and torch.equal(s, t) and s.data_ptr() != t.data_ptr()
        assert not t.requires_grad
    x = torch.randn(4, 3)
    loss = (student(x) - teacher(x)).pow(2).sum()
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.module.parameters())
    assert not teacher(x).requires_grad


def test_update_formula_by_hand():
    student = _student()
    teacher = EMATeacher(student, momentum=0.9, final_momentum=1.0)
    old = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.add_(2.0)
        student[1].num_batches_tracked.fill_(7)
    m = teacher.update(student, 50, 100)  # m = 1 - 0.1 (cos(pi/2) + 1) / 2 = 0.95
    assert m == pytest.approx(0.95)
    new_student = student.state_dict()
    for key, value in teacher.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.95 * old[key] + 0.05 * new_student[key])
        else:
            assert torch.equal(value, new_student[key])
    # the parameter moved by 0.05 of the unit step
    torch.testing.assert_close(teacher.module[0].bias, old["0.bias"] + 0.05)
    assert teacher.update(student, 100, 100) == 1.0
    torch.testing.assert_close(teacher.module[0].bias, old["0.bias"] + 0.05)  # m = 1: frozen


def test_teacher_forward_changes_nothing_in_train_mode():
    student = _student()
    frozen = copy.deepcopy(student).eval()
    teacher = EMATeacher(student).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randn(6, 3)
    out = teacher(x)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert teacher.module[1].track_running_stats  # restored
    # train mode normalises with the batch statistics, as the student in train mode
    torch.testing.assert_close(out, student.train()(x))
    teacher.eval()  # eval mode: the running statistics, still those of the copy
    torch.testing.assert_close(teacher(x), frozen(x))
    assert not torch.allclose(teacher(x), out)


def test_teacher_state_dict_round_trip_and_bad_input():
    student = _student()
    teacher = EMATeacher(student, momentum=0.5)
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(3)
    teacher.update(student, 0, 10)
    other = EMATeacher(_student())
    other.load_state_dict(teacher.state_dict())
    for key, value in teacher.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)
    with pytest.raises(ValueError, match="momentum"):
        EMATeacher(student, momentum=1.2)
    with pytest.raises(ValueError, match="final_momentum"):
        EMATeacher(student, final_momentum=-1)
    with pytest.raises(TypeError, match="student"):
        EMATeacher("resnet")
    with pytest.raises(ValueError, match="student"):
        teacher.update(nn.Linear(3, 4), 0, 10)


# ----------------------------------------------------------------------------- Centre

def test_centre_update_by_hand_and_accumulation():
    centre = Centre(2, momentum=0.9)
    centre.stage(torch.tensor([[1.0, 0.0], [3.0, 2.0]]))
    centre.stage(torch.tensor([[2.0, 4.0]]))  # a second micro-batch: one mean over 3 rows
    assert centre.value.eq(0).all()  # nothing before commit
    centre.commit()
    torch.testing.assert_close(centre.value, 0.1 * torch.tensor([[2.0, 2.0]]))
    centre.commit()  # nothing staged: nothing moves
    torch.testing.assert_close(centre.value, 0.1 * torch.tensor([[2.0, 2.0]]))


def test_centre_converges_to_the_batch_mean():
    batch = torch.randn(8, 5, generator=torch.Generator().manual_seed(3))
    centre = Centre(5, momentum=0.9)
    for _ in range(300):
        centre.stage(batch)
        centre.commit()
    torch.testing.assert_close(centre.value[0], batch.mean(0), atol=1e-6, rtol=0)
    # after k commits: (1 - 0.9^k) mean
    fresh = Centre(5)
    for _ in range(3):
        fresh.stage(batch)
        fresh.commit()
    torch.testing.assert_close(fresh.value[0], (1 - 0.9 ** 3) * batch.mean(0))


def test_centre_state_dict_and_bad_input():
    centre = Centre(3)
    centre.stage(torch.ones(2, 3))
    centre.commit()
    other = Centre(3)
    other.load_state_dict(centre.state_dict())
    assert torch.equal(other.value, centre.value) and set(centre.state_dict()) == {"value"}
    with pytest.raises(ValueError, match="momentum"):
        Centre(3, momentum=2)
    with pytest.raises(ValueError, match="teacher_output"):
        centre.stage(torch.ones(2, 4))
    with pytest.raises(ValueError, match="teacher_output"):
        centre.stage(torch.ones(3))
    with pytest.raises(TypeError, match="teacher_output"):
        centre.stage([1.0, 2.0, 3.0])


# ----------------------------------------------------------------------------- two gloo processes

SPLIT = (3, 5)  # unequal shards on purpose


def _data():
    gen = torch.Generator().manual_seed(5)
    return torch.randn(sum(SPLIT), 4, generator=gen), torch.randperm(10, generator=gen)[: sum(SPLIT)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _commit_all(rows, indices, process_group=None):
    """Stage the rows in a centre, a queue and a bank, commit, return their states."""
    centre, queue = Centre(4, momentum=0.5), Queue(6, 4)
    bank = MemoryBank(10, 4, generator=torch.Generator().manual_seed(0))
    centre.stage(rows)
    queue.stage(rows)
    bank.stage(indices, rows)
    for module in (centre, queue, bank):
        module.commit(process_group=process_group)
    return {"centre": centre.value, "queue": queue.tensor(), "ptr": int(queue.ptr), "bank": bank.tensor()}


def _rank_main(rank, world_size, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        rows, indices = _data()
        state = _commit_all(rows.split(SPLIT)[rank], indices.split(SPLIT)[rank], dist.group.WORLD)
        torch.save(state, f"{out_dir}/rank{rank}.pt")
    finally:
        shutdown()


def test_two_ranks_commit_like_one_process_with_the_whole_batch(tmp_path):
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rows, indices = _data()
    expected = _commit_all(rows, indices)
    alone = _commit_all(rows[: SPLIT[0]], indices[: SPLIT[0]])
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["centre"], expected["centre"])  # the mean of all 8 rows
        torch.testing.assert_close(got["queue"], expected["queue"])
        assert got["ptr"] == expected["ptr"] == 2
        torch.testing.assert_close(got["bank"], expected["bank"])
    assert (alone["centre"] - expected["centre"]).abs().max() > 1e-3  # not each shard's own mean
