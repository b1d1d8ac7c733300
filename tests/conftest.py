import os

import pytest
import torch

# unit tests are small: keep them from fighting over the 2 cores
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def real_bundle():
    """The packaged real model (SmolLM2-135M), loaded once per session."""
    from accelc.models.sources import load_model
    return load_model("smollm2-135m")
