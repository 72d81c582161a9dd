"""Persistent cache tasks on the daemon: import a local file, export one from the swarm (``docs/dfcache.md``).

Persistent cache content lives in a storage of its own, ``<storage.dir>/persistent-cache/`` (content files and
piece metadata as for URL tasks, plus ``metadata/entries.db`` for what the importer declared). It is kept across
restarts whatever ``storage.keep`` says, and the standard GC never evicts it: an entry leaves when its TTL runs
out, when its task is deleted, or when its content no longer matches its digest.

Import reads the caller's file with the caller's rights, copies it into the cache while hashing it once (SHA-256
of the content: the importer's digest; the task id follows Dragonfly's rule from the same hash state; CRC-32 per
piece for Vortex), then records the task with the scheduler.

A scheduler keeps persistent cache tasks in memory; after it restarts, each daemon declares its copies again
(``reconcile``): the importer its task, other holders their copies.

Export (and replication, which the scheduler asks for) gets the sizes and the importer's digest from
StatPersistentCacheTask, registers on AnnouncePersistentCachePeer, learns from each candidate parent where its
Vortex port is (SyncPersistentCachePieces), fetches the pieces (CRC-32 checked against the parent's), then hashes
the whole content and compares it with the importer's digest, and for an id derived from the content, with the
id. A mismatch discards everything; the next attempt takes each parent alone so the one that lied is found and
reported. Content is kept, served and written out only once it has matched.
"""

from dragonfly.daemon.persistent_cache.manager import PersistentCacheManager

__all__ = ["PersistentCacheManager"]
