"""Data access: plain functions over a SQLAlchemy session, keyword-only arguments, no HTTP and no policy.

Callers own the transaction (they commit); these functions only read, add and flush.
"""
