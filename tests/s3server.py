"""A real S3 API on loopback for tests: moto's server app behind a thin recording/auth layer.

Usage::

    from tests.s3server import s3_server, dummy_credentials, upload_dir

    def test_x(monkeypatch, tmp_path):
        dummy_credentials(monkeypatch)
        with s3_server() as endpoint:               # endpoint is the URL (a str)
            upload_dir(endpoint, local_root, "berg", "prefix")
            endpoint.make_public("berg")               # optional: public-read, for anonymous access
            store = open_store("s3://berg/prefix", endpoint_url=endpoint)
            endpoint.requests  # [(method, path, signed), ...] seen by the server

Anonymous access: moto itself refuses an unsigned GET/HEAD of an object (403) unless the bucket policy
or the object ACL makes it public-read; ``endpoint.make_public(bucket)`` puts a public-read bucket policy
(``Principal: "*"``, ``s3:GetObject`` + ``s3:ListBucket``), as the BERG bucket has. moto does not check
bucket-level operations (listing), so this layer answers unsigned requests for buckets that were not made
public with 403 AccessDenied, as S3 does. Every request is logged with whether it carried a signature, so
tests can show that ``anonymous=True`` really sends unsigned requests and that they work only against a
public bucket.
"""

from __future__ import annotations

import contextlib
import json
import threading
from urllib.parse import unquote

__all__ = ["s3_server", "S3Endpoint", "dummy_credentials", "upload_dir", "boto3_client"]


class S3Endpoint(str):
    """The endpoint URL, with the server's request log and public-bucket set attached."""

    requests: list
    public_buckets: set

    def make_public(self, bucket: str) -> None:
        """Give ``bucket`` a public-read bucket policy (as the BERG bucket has) and allow anonymous listing."""
        client = boto3_client(self)
        client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
            "Version": "2012-10-17",
            "Statement": [
                # moto checks HEAD against the made-up action s3:HeadObject (S3 itself uses s3:GetObject)
                {"Sid": "PublicRead", "Effect": "Allow", "Principal": "*",
                 "Action": ["s3:GetObject", "s3:HeadObject"],
                 "Resource": f"arn:aws:s3:::{bucket}/*"},
                {"Sid": "PublicList", "Effect": "Allow", "Principal": "*", "Action": "s3:ListBucket",
                 "Resource": f"arn:aws:s3:::{bucket}"},
            ]}))
        self.public_buckets.add(bucket)

    def count(self, method: str | None = None, contains: str = "") -> int:
        return sum(1 for m, p, _ in list(self.requests) if (method is None or m == method) and contains in p)

    def clear(self) -> None:
        self.requests.clear()


def _signed(environ) -> bool:
    if environ.get("HTTP_AUTHORIZATION"):
        return True
    q = environ.get("QUERY_STRING", "")
    return "X-Amz-Signature=" in q or "Signature=" in q


def _middleware(app, log: list, public: set):
    def wrapped(environ, start_response):
        path = unquote(environ.get("PATH_INFO", ""))
        signed = _signed(environ)
        log.append((environ.get("REQUEST_METHOD", ""), path, signed))
        bucket, _, key = path.lstrip("/").partition("/")
        # bucket-level requests (listing, location): moto does not check them, so we do
        if not signed and not key and not path.startswith("/moto-api") and bucket not in public:
            body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                    b"<Message>Access Denied (anonymous request to a non-public bucket)</Message></Error>")
            start_response("403 Forbidden", [("Content-Type", "application/xml"),
                                              ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return wrapped


@contextlib.contextmanager
def s3_server():
    """Start moto's S3 on 127.0.0.1 (free port) in a thread; yield an :class:`S3Endpoint` (the URL).

    moto's state is per process: bucket names are shared by every server started in one test session.
    """
    from moto.moto_server.threaded_moto_server import MotoRequestHandler
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    class QuietHandler(MotoRequestHandler):
        def log_request(self, *args, **kwargs):
            pass

    log: list = []
    public: set = set()
    app = _middleware(DomainDispatcherApplication(create_backend_app), log, public)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = S3Endpoint(f"http://127.0.0.1:{server.server_port}")
    endpoint.requests = log
    endpoint.public_buckets = public
    try:
        yield endpoint
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def dummy_credentials(monkeypatch) -> None:
    """Fake AWS credentials and region, and no profile/endpoint leaking in from the environment."""
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def boto3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=str(endpoint), region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def upload_dir(endpoint: str, local_root, bucket: str, prefix: str = "", *, create: bool = True) -> int:
    """Upload every file under ``local_root`` to ``s3://bucket/prefix/…``; returns the number of files."""
    from pathlib import Path

    client = boto3_client(endpoint)
    if create:
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            client.create_bucket(Bucket=bucket)
    root = Path(local_root)
    n = 0
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        key = "/".join(x for x in (prefix.strip("/"), f.relative_to(root).as_posix()) if x)
        client.upload_file(str(f), bucket, key)
        n += 1
    return n


