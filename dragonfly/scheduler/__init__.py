"""The scheduler: hosts, tasks and peers in memory, parent selection, seed triggering (scheduler.v2 over gRPC)."""
