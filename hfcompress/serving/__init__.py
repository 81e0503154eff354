"""``hfcompress serve``: a compressed model behind a batched HTTP API (FastAPI on uvicorn), with a page to try it.

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client). The modules import it when used, so
``import hfcompress.serving.config`` works without it.
"""

from .config import ServeConfig

__all__ = ["ServeConfig"]
