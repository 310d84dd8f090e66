"""The S3 protocol: routing, SigV4 verification, XML, errors, streaming responses."""
