"""The kernel stage's fixtures (kernel_src: what runs inside the notebook). The tiny real models
come from tests/conftest.py's `tiny_models`, which the notebook stage's tests use too.

Fixtures that more than one module of this folder uses are defined here, once (none yet)."""
