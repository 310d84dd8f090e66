"""The metadata database: where every object lives and how many bytes each backend holds."""
