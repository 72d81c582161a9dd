"""Shared building blocks: config, ids, digests, errors, the native facade."""
