"""The scoring fixtures (the competition metric and where its points are lost; the image-level
tasks' metrics and per-image scores).

Fixtures that more than one module of this folder uses are defined here, once (none yet)."""
