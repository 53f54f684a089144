"""Ferry: a durable, SQS-compatible message queue server.

The public surface is the ``ferrymq`` command and the SQS wire API it serves; the
Python modules are private (leading underscore) and may change without notice.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
