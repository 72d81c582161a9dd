"""gRPC ``manager.v2`` for schedulers and dfdaemons (``docs/manager.md#grpc-managerv2``)."""
