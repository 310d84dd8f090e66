"""Storage backends: the IBackend seam and its s3 and local implementations."""
