"""The Ray Serve HTTP API (FastAPI ingress). `serve/app.py` ends with `app = ...bind()`."""
