"""Sample ids for :class:`~components.pretrain.dataset.MaskPretrainDataset` per epoch and per rank (different
data on each rank), resumable in the middle of an epoch.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["TwoViewSampler"]


class TwoViewSampler(DistributedSampler):
    """Sample ids for :class:`MaskPretrainDataset`: epoch ``e`` (1-based, set by MONAI's workflow) uses
    ids ``(e-1)*samples_per_epoch + k``; rank ``r`` of ``R`` takes ``k = r, r+R, ...``.

    Works without an initialised process group (one replica). :meth:`attach` skips the ids already
    consumed when a run resumes in the middle of an epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        samples_per_epoch: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        batch_size: int = 1,
    ) -> None:
        if num_replicas is None or rank is None:
            ddp = dist.is_available() and dist.is_initialized()
            num_replicas = dist.get_world_size() if ddp else 1 if num_replicas is None else num_replicas
            rank = dist.get_rank() if ddp else 0 if rank is None else rank
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True)
        self.samples_per_epoch, self.batch_size = int(samples_per_epoch), int(batch_size)
        self.num_samples = self.samples_per_epoch // self.num_replicas
        self.total_size = self.num_samples * self.num_replicas
        self.epoch, self.skip = 1, 0

    def __iter__(self):
        base = (max(self.epoch, 1) - 1) * self.samples_per_epoch
        ids = [base + self.rank + k * self.num_replicas for k in range(self.num_samples)]
        skip, self.skip = self.skip, 0
        return iter(ids[skip:])

    def __len__(self) -> int:
        return self.num_samples

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        def _resume(e: Any) -> None:
            done = e.state.iteration - (e.state.epoch - 1) * e.state.epoch_length
            self.skip = max(done, 0) * self.batch_size

        engine.add_event_handler(Events.EPOCH_STARTED, _resume)
