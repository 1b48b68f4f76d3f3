"""The CLI's client commands run against the real stack of tests/e2e (gunicorn API, worker, webhook sender)."""

from e2e.conftest import e2e_settings, stack  # noqa: F401  (fixtures reused, not rewritten)
