"""Shared test setup.

One torch thread for the whole suite: the models are tiny, the machine has 2 cores shared with
the loader threads (and, in CI, nothing else), and one thread makes runs repeatable. It is set
at import, before any test module is collected, so every test sees the same setting.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
