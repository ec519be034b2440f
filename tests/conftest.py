import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
# Two cores, shared: more threads than that only adds contention.
torch.set_num_threads(2)
