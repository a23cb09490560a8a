"""Where runs execute: the CPU gets one worker per job, one GPU runs in the driver's
process, several GPUs get a worker each."""

import pytest
import torch

from bnstudy.backends import plan_execution


@pytest.mark.parametrize("gpus, jobs, slots", [(1, None, ("cuda",)), (4, None, ("cuda:0", "cuda:1", "cuda:2", "cuda:3")),
                                               (4, 2, ("cuda:0", "cuda:1"))])  # fmt: skip
def test_one_gpu_runs_in_process_and_several_get_one_worker_each(monkeypatch, gpus, jobs, slots):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    execution = plan_execution("local", None, "auto", jobs)
    assert (execution.device, execution.slots, execution.grouped) == ("cuda", slots, True)
    assert not plan_execution("local", None, "auto", jobs, fuse=False).grouped  # --no-fuse
    assert plan_execution("local", None, "cpu", 3).slots == ("cpu",) * 3
