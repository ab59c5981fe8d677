"""The tune stage's fixtures (bundler.tune: the cache, evidence, search, plans, --write).

Fixtures that more than one module of this folder uses are defined here, once (none yet)."""
