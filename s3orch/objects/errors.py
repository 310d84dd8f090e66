"""Errors the orchestration core raises; the S3 layer maps each to its AWS code."""

from __future__ import annotations


class ObjectError(Exception):
    """Base of the core's errors."""


class NoSuchObject(ObjectError):
    """The key has no current version."""


class InsufficientStorage(ObjectError):
    """No backend has room for the write."""


class BadDigest(ObjectError):
    """The body does not match the digest the client sent."""


class IncompleteBody(ObjectError):
    """The body ended before the declared length, or ran past it."""


class Unavailable(ObjectError):
    """No copy of the object could be read from any backend."""


class Undecryptable(ObjectError):
    """An encrypted object cannot be read: its key is not configured, or its bytes or its
    key material are not what was sealed. Never answered with guessed or partial bytes."""


class KeyServiceUnavailable(ObjectError):
    """The master key that unwraps the object's data key cannot be reached right now."""
