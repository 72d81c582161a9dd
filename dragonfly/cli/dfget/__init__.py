"""dfget: download one file through the local dfdaemon (``dfget URL -O PATH``).

dfget is a thin client: it checks its arguments, asks the daemon's ``DfdaemonDownload.DownloadTask`` over the unix
socket, draws progress from the per-piece messages and reports where the bytes came from. The daemon fetches,
verifies and writes the output file. Start-up stays light: dfget speaks gRPC over HTTP/2 itself (``rpc``, ``hpack``)
and writes and reads its download messages itself (``messages``), so neither grpcio nor the protobuf runtime is
imported on the download path; arguments are checked first, so a bad command line or a missing daemon answers at
once.
"""

from dragonfly.cli.dfget.command import main, run

__all__ = ["main", "run"]
