"""s3orch: many S3-compatible backends behind one S3 endpoint."""
