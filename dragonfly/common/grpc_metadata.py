"""gRPC metadata keys our own components send each other (cheap to import: dfget uses it before grpc).

``INSECURE_ORIGIN_METADATA`` asks a dfdaemon not to verify the origin's TLS certificate for one download; the
``common.v2.Download`` message has no field for it. Sent by ``dfget --insecure-skip-verify`` on the local API, and
by the scheduler on the upload API for a preheat the manager asked for with ``insecure_skip_verify``
(docs/security.md#origin-tls).
"""

INSECURE_ORIGIN_METADATA = "x-dragonfly-insecure-skip-verify"
# Asks a dfdaemon for the output as a copy rather than a hard link to its cache (``dfget --copy``, for a file that
# will be edited in place; docs/output-and-cache.md). Only the local API reads it.
OUTPUT_COPY_METADATA = "x-dragonfly-output-copy"
