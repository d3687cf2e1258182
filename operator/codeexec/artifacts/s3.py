"""A small S3 client over aiohttp: put, get, list and delete objects, signed with AWS
Signature Version 4 (path-style URLs, so any S3-compatible server works).

Only what the artifact store needs. No new dependency: aiohttp is already the operator's and
the client's HTTP library, and SigV4 is a few HMACs over a canonical form of the request.
"""

from __future__ import annotations

import hashlib
import hmac
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class S3Error(Exception):
    def __init__(self, status: int, text: str) -> None:
        self.status = status
        super().__init__(f"S3 answered {status}: {text[:300]}")


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:  # never in a log line
        return f"Credentials({self.access_key_id!r}, ***)"


def _uri_encode(text: str, *, keep_slash: bool) -> str:
    return quote(text, safe="/-_.~" if keep_slash else "-_.~")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sign(
    method: str,
    url: str,
    creds: Credentials,
    region: str,
    payload_sha256: str,
    now: datetime,
) -> dict[str, str]:
    """The headers that authenticate this request (host, x-amz-date, x-amz-content-sha256,
    Authorization). `url` is already encoded as it goes on the wire."""
    parts = urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    headers = {
        "host": parts.netloc,
        "x-amz-content-sha256": payload_sha256,
        "x-amz-date": amz_date,
    }
    query = sorted((k, v) for k, _, v in (p.partition("=") for p in parts.query.split("&") if p))
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            "&".join(f"{k}={v}" for k, v in query),
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
            ";".join(sorted(headers)),
            payload_sha256,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + creds.secret_access_key).encode(), day)
    for part in (region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"{ALGORITHM} Credential={creds.access_key_id}/{scope}, "
        f"SignedHeaders={';'.join(sorted(headers))}, Signature={signature}"
    )
    del headers["host"]  # aiohttp sends it
    return headers


class S3:
    """One endpoint and bucket, path-style: {endpoint}/{bucket}/{key}."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        creds: Credentials,
        region: str = "us-east-1",
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.creds = creds
        self.region = region
        self._session = session

    def _url(self, key: str = "", query: dict[str, str] | None = None) -> str:
        url = f"{self.endpoint}/{_uri_encode(self.bucket, keep_slash=False)}"
        if key:
            url += "/" + _uri_encode(key, keep_slash=True)
        if query:
            url += "?" + "&".join(
                f"{_uri_encode(k, keep_slash=False)}={_uri_encode(v, keep_slash=False)}"
                for k, v in sorted(query.items())
            )
        return url

    async def _call(
        self, method: str, key: str = "", body: bytes = b"", query: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        url = self._url(key, query)
        digest = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        headers = sign(method, url, self.creds, self.region, digest, datetime.now(UTC))
        session = self._session or aiohttp.ClientSession()
        try:
            async with session.request(
                method,
                URL(url, encoded=True),
                data=body if body else None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=120),
            ) as resp:
                return resp.status, await resp.read()
        finally:
            if self._session is None:
                await session.close()

    async def create_bucket(self) -> None:
        """Creates the bucket; one that exists already (owned by us) is fine."""
        status, text = await self._call("PUT")
        if status >= 300 and b"BucketAlreadyOwnedByYou" not in text:
            raise S3Error(status, text.decode(errors="replace"))

    async def put(self, key: str, data: bytes) -> None:
        status, text = await self._call("PUT", key, data)
        if status >= 300:
            raise S3Error(status, text.decode(errors="replace"))

    async def get(self, key: str) -> bytes:
        status, data = await self._call("GET", key)
        if status >= 300:
            raise S3Error(status, data.decode(errors="replace"))
        return data

    async def delete(self, key: str) -> None:
        status, text = await self._call("DELETE", key)
        if status >= 300 and status != 404:
            raise S3Error(status, text.decode(errors="replace"))

    async def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            status, data = await self._call("GET", query=query)
            if status >= 300:
                raise S3Error(status, data.decode(errors="replace"))
            root = ET.fromstring(data)
            keys += [e.text or "" for e in root.iter(f"{_NS}Key")]
            more = root.findtext(f"{_NS}IsTruncated") == "true"
            token = root.findtext(f"{_NS}NextContinuationToken")
            if not more or not token:
                return keys

    async def delete_prefix(self, prefix: str) -> int:
        keys = await self.list(prefix)
        for key in keys:
            await self.delete(key)
        return len(keys)
