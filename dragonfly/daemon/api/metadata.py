"""gRPC metadata keys of the local API that our own clients send (cheap to import: dfget uses it before grpc)."""

#: A local client (``dfget --insecure-skip-verify``) asks the daemon not to verify the origin's TLS certificate for
#: this download; ``common.v2.Download`` has no field for it.
INSECURE_ORIGIN_METADATA = "x-dragonfly-insecure-skip-verify"
