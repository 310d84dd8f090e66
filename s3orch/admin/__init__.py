"""The operator's JSON API under /admin/api/, behind a bearer token."""
