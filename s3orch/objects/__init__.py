"""The HTTP-free orchestration core: put/get/head/delete/list, routing and quotas."""
