"""Data access: plain functions over a SQLAlchemy session, keyword-only arguments, no HTTP and no policy.

The caller — a service in :mod:`server.core` — owns the transaction and commits; these functions
only read, add and flush.
"""
