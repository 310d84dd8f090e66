"""`s3orch keygen`: a fresh 256-bit key in the form the configuration takes."""

from __future__ import annotations

import base64
import io

from s3orch.cli import main
from s3orch.crypto.keys import decode_key


def _keygen() -> str:
    out, err = io.StringIO(), io.StringIO()
    assert main(["keygen"], stdout=out, stderr=err) == 0
    assert err.getvalue() == ""
    return out.getvalue()


def test_keygen_prints_base64_of_32_bytes() -> None:
    """The output is one line of standard base64 decoding to 32 bytes, accepted as a master key."""
    line = _keygen()
    assert line.endswith("\n") and line.count("\n") == 1
    assert len(base64.b64decode(line.strip(), validate=True)) == 32
    assert len(decode_key(line.strip())) == 32


def test_keygen_keys_differ() -> None:
    """Two runs never print the same key."""
    assert _keygen() != _keygen()
