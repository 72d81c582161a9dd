"""The scheduler.v2.Scheduler gRPC service."""
