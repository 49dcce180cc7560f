"""State that self-supervised methods carry between steps: a FIFO queue, an
indexed memory bank, an EMA teacher with its cosine momentum schedule, and
DINO's centre. Each is an ``nn.Module`` whose state is buffers (in the state
dict); values are staged during ``losses()`` and written by ``commit()`` /
``update()`` in ``after_step`` only, once per optimizer step, so gradient
accumulation stages several micro-batches and commits them together."""

from python_models.memory.bank import MemoryBank
from python_models.memory.centre import Centre
from python_models.memory.ema import EMATeacher, cosine_momentum, ema_teacher
from python_models.memory.queue import Queue

__all__ = ["Centre", "EMATeacher", "MemoryBank", "Queue", "cosine_momentum", "ema_teacher"]
