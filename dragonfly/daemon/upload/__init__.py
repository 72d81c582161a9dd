"""Serving pieces: the Vortex TCP server and the DfdaemonUpload gRPC service."""
