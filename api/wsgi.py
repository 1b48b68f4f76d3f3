"""The WSGI entry point for gunicorn: `gunicorn api.wsgi:app`.

Settings come from the VIDSERVE_* environment variables (see vidserve/settings.py).
"""

from api.app import create_app

app = create_app()
