"""Celery wiring for batchroute: the app, its queues and thin tasks over the ``batchroute`` library."""
