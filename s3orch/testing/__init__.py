"""Fakes shipped with the package for tests; the server never imports them."""
