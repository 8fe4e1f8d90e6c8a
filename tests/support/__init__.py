"""Reusable test support: a real S3 server (moto) and fixtures built on it."""
