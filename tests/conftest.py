import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# One thread: OpenMP threads that wait for a busy core make tiny ops hundreds of times slower.
torch.set_num_threads(1)


@pytest.fixture
def exact_cuda():
    """TF32 off, so GPU float32 convolutions and products round like the CPU's."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
