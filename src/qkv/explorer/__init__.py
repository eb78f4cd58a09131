"""The live explorer: a web page over real attention weights and a mechanism lab (``qkv explore``).

- `create_app` — the FastAPI app: the page (static files in this package, nothing
  from the network) and the JSON API ``/api/health``, ``/api/attention``, ``/api/lab``.
- `ModelRegistry` / `Limits` — models loaded once and shared across requests; the
  bounds on what one request may ask for.
- `qkv.explorer.lab` — scaled dot-product attention step by step on small numbers,
  computed with `qkv.attention` / `qkv.attention_weights`.
- `serve_in_thread` — run the app in the background (tests, notebooks).
"""

from qkv.explorer.app import create_app
from qkv.explorer.models import ExplorerError, Limits, ModelRegistry
from qkv.explorer.server import serve_in_thread

__all__ = ["ExplorerError", "Limits", "ModelRegistry", "create_app", "serve_in_thread"]
