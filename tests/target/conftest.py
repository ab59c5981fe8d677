"""The target's fixtures (the image's baseline, the target interpreter's tags and markers).

Fixtures that more than one module of this folder uses are defined here, once (none yet)."""
