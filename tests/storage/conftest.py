"""A local S3-compatible server for the shared-storage tests: moto's server mode on 127.0.0.1 (a free port), started
once per session; each test gets a bucket of its own and the AWS_* variables that reach it. Skipped, saying why,
when moto is not installed or cannot start."""

import logging
import uuid

import pytest


@pytest.fixture(scope="session")
def s3_endpoint():
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as error:
        pytest.skip(f"moto[server] is not installed ({error}); `pip install -e .[dev]` installs it")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    try:
        server.start()
    except Exception as error:  # a sandbox without loopback sockets, a moto that does not start
        pytest.skip(f"moto's S3 server could not start on 127.0.0.1: {type(error).__name__}: {error}")
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


S3_TEST_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch):
    """A new bucket on the local server; the environment points botocore at the server with test credentials."""
    import fsspec

    from models.storage import _cached_store

    for name, value in {**S3_TEST_ENVIRONMENT, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "PROMPTLAB_WORKSPACE_OPTIONS", "PROMPTLAB_WORKSPACE_CACHE"):
        monkeypatch.delenv(name, raising=False)
    _cached_store.cache_clear()
    bucket = f"promptlab-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
    yield bucket
    _cached_store.cache_clear()
