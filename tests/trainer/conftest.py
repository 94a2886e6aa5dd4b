"""The trainer's tests train tiny networks on a few hundred images, on a machine whose two cores
other test runs share: one intra-op thread each. With two, every parallel region waits for a
thread that another process holds off the core; test_models' few-step runs took 160 s instead
of 43 s that way (load average ~7 on 2 cores). What a run computes does not depend on it."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
