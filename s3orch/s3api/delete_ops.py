"""DeleteObjects: up to 1000 keys in one request, each answered on its own."""

from __future__ import annotations

from typing import TYPE_CHECKING
from xml.etree.ElementTree import Element

from twisted.internet.defer import Deferred, gatherResults

from s3orch.s3api import xml
from s3orch.s3api.replies import local_name, malformed_xml, request_xml, send

if TYPE_CHECKING:
    from s3orch.s3api.resource import Call, S3Context

MAX_KEYS = 1000
# 1000 keys of at most 1 KiB each, with their XML, fit well within this.
MAX_BODY = 2 * 1024 * 1024
MAX_KEY_BYTES = 1024
CONCURRENCY = 10


def _requested(root: Element) -> tuple[list[str], bool]:
    if local_name(root.tag) != "Delete":
        raise malformed_xml()
    keys: list[str] = []
    quiet = False
    for element in root:
        name = local_name(element.tag)
        if name == "Quiet":
            quiet = (element.text or "").strip().lower() == "true"
        elif name == "Object":
            fields = {local_name(child.tag): child.text or "" for child in element}
            if "Key" not in fields:
                raise malformed_xml()
            keys.append(fields["Key"])
    if not keys or len(keys) > MAX_KEYS:
        raise malformed_xml()
    return keys, quiet


async def delete_objects(ctx: S3Context, call: Call) -> None:
    keys, quiet = _requested(await request_xml(call, MAX_BODY))
    deleted: list[str] = []
    errors: list[tuple[str, str, str]] = []

    async def delete_one(key: str) -> None:
        if not key or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES or "\x00" in key:
            errors.append((key, "InvalidArgument", "Invalid key"))
            return
        try:
            await ctx.orchestrator.delete(call.bucket, key)
        except Exception:
            errors.append(
                (key, "InternalError", "We encountered an internal error. Please try again.")
            )
            return
        deleted.append(key)

    for start in range(0, len(keys), CONCURRENCY):
        batch = keys[start : start + CONCURRENCY]
        await gatherResults([Deferred.fromCoroutine(delete_one(key)) for key in batch])
    order = {key: i for i, key in enumerate(keys)}
    deleted.sort(key=order.__getitem__)
    errors.sort(key=lambda e: order[e[0]])
    send(call, xml.delete_result([] if quiet else deleted, errors))
