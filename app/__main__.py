"""python -m app: serve the web page (same as `transfer app`)."""

from app.main import launch

launch()
