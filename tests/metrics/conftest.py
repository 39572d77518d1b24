import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    """The tiny tensors here gain nothing from intra-op threads; on a shared 2-core machine extra threads only
    contend (a 4 s training run took 15 s with 2 threads under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
