"""Resumable background jobs: batches over keyset cursors, state in the database, one
runner per process, leases so that several processes never run one job at once."""
