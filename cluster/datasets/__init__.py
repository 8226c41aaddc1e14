"""A project's dataset uploads: store, list, delete, validate, expire."""
