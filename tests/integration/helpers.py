"""Clients for integration tests."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from s3orch.testing.s3orch_process import DEMO_ACCESS_KEY, DEMO_SECRET_KEY


def boto_client(
    endpoint: str, access_key: str = DEMO_ACCESS_KEY, secret: str = DEMO_SECRET_KEY
) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )
