"""dfdaemon: the peer (and, in seed mode, the seed peer) that stores, downloads and serves pieces."""
