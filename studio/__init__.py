"""Studio: fine-tune and personalise text-to-image diffusion models.

The core library. It never imports gradio: the web UI (``webui/``) and the CLI
(``studio.cli``) are thin fronts over the functions exported from here.
"""

__version__ = "0.1.0"
