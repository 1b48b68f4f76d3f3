"""vidserve's public REST API: a thin Flask app over the shared job domain in `vidserve/`.

It validates, stores and enqueues jobs; it never imports torch (the API pod starts in a second).
"""
