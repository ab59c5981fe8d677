"""The notebook stage's fixtures (bundler.notebook: render, CONFIG, kernel metadata; the rendered
notebook executed).

Fixtures that more than one module of this folder uses are defined here, once (none yet)."""
