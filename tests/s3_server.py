"""moto's S3 server on 127.0.0.1 (server mode: a real HTTP endpoint), and the AWS settings
that point s3fs, boto3 and every child process at it (tests/test_object_storage.py,
tests/test_ray.py)."""

from __future__ import annotations

from moto.server import ThreadedMotoServer

# AWS settings of the developer's machine that would send requests elsewhere
FOREIGN_AWS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE")


def start_s3() -> tuple[ThreadedMotoServer, str]:
    """(the server, its endpoint URL); stop it with `server.stop()`."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def aws_env(endpoint: str) -> dict[str, str]:
    """The environment that reaches `endpoint` with test credentials (no real account)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
