"""Turning input references (URLs, data: URIs, uploads, examples) into checked media bytes."""
