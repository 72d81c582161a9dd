"""dfget: download one file through the local dfdaemon (``dfget URL -O PATH``).

dfget is a thin client: it checks its arguments, asks the daemon's ``DfdaemonDownload.DownloadTask`` over the unix
socket, draws progress from the per-piece messages and reports where the bytes came from. The daemon fetches,
verifies and writes the output file. Start-up stays light: arguments are parsed and checked before grpc and the
protocol stubs are imported, so a bad command line or a missing daemon answers at once.
"""

from dragonfly.cli.dfget.command import main, run

__all__ = ["main", "run"]
