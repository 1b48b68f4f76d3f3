"""HTTP to a checked address: the connection goes to the IP that vidserve.webhook_urls checked, never to a
second resolution of the name, while the request still speaks to the host name (Host header, TLS SNI and
certificate verification against the name). Never through a proxy: a proxy would resolve the name itself.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from vidserve.webhook_urls import Target


class PinnedAdapter(HTTPAdapter):
    """A transport adapter that serves one `Target`: every connection it opens goes to `target.address`."""

    def __init__(self, target: Target) -> None:
        self.target = target
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if (host_params["host"] or "").lower() != self.target.hostname.lower():
            raise requests.exceptions.InvalidURL(f"this connection is pinned to {self.target.hostname}")
        host_params["host"] = str(self.target.address)
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = self.target.hostname
            pool_kwargs["assert_hostname"] = self.target.hostname
        return host_params, pool_kwargs

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        # The socket connects to an IP, so the Host header must be set from the URL, not from the connection.
        request.headers["Host"] = urlsplit(request.url).netloc
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=None)


def pinned_session(target: Target) -> requests.Session:
    """A session whose http and https connections all go to `target.address`."""
    session = requests.Session()
    adapter = PinnedAdapter(target)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
