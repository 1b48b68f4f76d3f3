"""The admin dashboard: a server-rendered Flask blueprint (`views`) over the job tables, queues and heartbeats.

`queries` holds what the pages read and the operator actions (cancel, retry, redeliver); templates and static
assets (Chart.js vendored from npm, no CDN) live beside them.
"""
