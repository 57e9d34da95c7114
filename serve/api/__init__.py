"""The HTTP surface: request/response schemas, errors and their mapping to HTTP, routes."""
