"""The scoring fixtures (the competition metric and where its points are lost).

Fixtures that more than one module of this folder uses are defined here, once (none yet)."""
