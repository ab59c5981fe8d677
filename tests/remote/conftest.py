"""The remote stage's fixtures (bundler.remote: push, status, submit against a stand-in of Kaggle).

Fixtures that more than one module of this folder uses are defined here, once (none yet)."""
