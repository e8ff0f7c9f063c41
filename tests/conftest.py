"""Suite-wide settings: one torch thread.

The suite runs tiny models; on a 2-core machine a second intra-op thread only busy-waits and makes
tiny kernels many times slower, so every test runs single-threaded.
"""

import torch

torch.set_num_threads(1)
