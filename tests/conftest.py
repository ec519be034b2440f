import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
# One thread: OpenMP threads that wait for a busy core make tiny ops hundreds of times slower.
torch.set_num_threads(1)
