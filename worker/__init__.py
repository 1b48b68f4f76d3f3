"""The worker: Celery tasks that claim jobs in Postgres, run them on the engine, store MP4s and send webhooks.

A worker process owns one engine per served model; its Celery thread pool is the window of jobs the
engines batch together.
"""
