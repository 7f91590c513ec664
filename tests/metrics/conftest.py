"""Fixtures for the metric tests: seeded, and one CPU thread.

The test machines are small and shared; with several intra-op threads competing for
two cores, tiny models run ~100x slower than single-threaded.
"""
import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread_seeded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
