"""pytest-benchmark suites: `pytest bench/ --benchmark-only` (compare runs with --benchmark-compare)."""

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
