"""The tooling that starts and drives processes: the `vidserve` CLI and its API client, the local dev server
(`make run`) and the S3 server it starts. Apart from the shared job domain (`vidserve/*.py`), which never imports
it, `api` or `worker`; the tools may import all of them."""
