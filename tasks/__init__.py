"""Celery tasks: `celery -A tasks worker` and `celery -A tasks beat` (see Procfile)."""

from tasks.app import app

__all__ = ["app"]
