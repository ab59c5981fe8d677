"""The demo's fixtures (bundler.demo: the synthetic set, the training loops, the command).

Fixtures that more than one module of this folder uses are defined here, once (none yet)."""
