"""The WSGI entry point for gunicorn: `gunicorn api.wsgi:app`.

Settings come from the VIDSERVE_* environment variables (see vidserve/settings.py).
"""

from api import gunicorn_errors
from api.app import create_app

gunicorn_errors.install()  # gunicorn's own 400/414/431 answers in the API's JSON error shape
app = create_app()
