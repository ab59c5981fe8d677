"""`bundler render-notebook`: kernel_src + bundle.toml -> the inference notebook and kernel-metadata.json."""

from bundler.notebook.render import RenderResult, render_notebook

__all__ = ["RenderResult", "render_notebook"]
