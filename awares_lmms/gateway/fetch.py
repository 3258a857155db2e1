"""Fetching an allow-listed image URL: bounded in size and time, redirects not followed (a redirect could
lead off the allow-list), the body read no further than the limit."""

from __future__ import annotations

import httpx

from awares_lmms.gateway.chat_request import APIError

FETCH_TIMEOUT_S = 10.0


def fetch_bounded(url: str, limit: int) -> bytes:
    with httpx.Client(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code} from {url}")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    raise APIError(413, f"the image at {url} is over this gateway's limit of {limit} bytes",
                                   "image_too_large", param="messages")
                chunks.append(chunk)
    return b"".join(chunks)
