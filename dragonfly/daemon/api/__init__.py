"""The local API: DfdaemonDownload on a unix socket."""
