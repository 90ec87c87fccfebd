# pytest configuration shared by every test file: run with `python -m pytest -q tests`.
import os
import sys

# Tests run two processes at most on 2 cores; one thread each avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as a local Hugging Face directory (converted from its GGUF file once, cached)."""
    from tests.real_model import converted
    return converted()
