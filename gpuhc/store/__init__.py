"""The result store: every report of every node, on shared storage, read by status/show/history/export.

Layout under the root (``store:`` in config)::

    .gpuhc-store                 the marker `gpuhc store init` writes: this directory is the store
    nodes/<node>/latest.json     the newest report (Report.to_dict()), replaced by atomic rename
    nodes/<node>/summary.json    a few hundred bytes about the newest report, all ``gpuhc status`` reads
    nodes/<node>/history.jsonl   every report, one JSON object a line, appended; compacted by age and count
    nodes/<node>/.lock           flock: writers of the node hold it exclusively while they write
    nodes/<node>/ack.json        an operator's acknowledgement (``gpuhc resume --force``)

Writers: one per node file by design (a node writes its own results). A record is appended with one
``os.write`` of the whole line on an ``O_APPEND`` descriptor, then latest.json and summary.json are
replaced (temporary file in the same directory, fsync, ``os.replace``) when the record is the
newest. Compaction rewrites history to a temporary file and renames it, under the same lock, so it
cannot lose an append. Directories are created 0755 and files 0644 (users read, only the writer,
root on a cluster, writes), the lock 0600.

Trust (gpuhc/trust.py, like sshd's StrictModes): the store, the state directory and every
directory above them must be owned by root (or the user gpuhc runs as) and not writable by group
or others (a sticky directory such as /tmp may be above them); a writer refuses anything else
(spools, with a warning naming the path and the fix), a reader stops with that one line. A spooled
file not owned by root (or the user) is set aside, never flushed.

Mount points: a configured store must carry the marker of ``gpuhc store init PATH``; a writer that
does not find it (nothing mounted there: the records would hide under the mount) refuses the
store and spools, with a warning naming the path. The default local store (no ``store:``
configured) makes its marker itself.

Hangs: writes, and the reads of one node, run in a detached child (detach.py) that the caller
waits for at most its share of the budget; a write not done by then is spooled locally
(``<state_dir>/spool/<node>/<time>-<pid>-<n>.json``) and flushed, exactly once, by a later write
(writing.py says how). Readers skip a corrupt or truncated record with a warning naming the file
and line; only regular files are read, each at most MAX_RECORD_BYTES (a history: its newest
MAX_HISTORY_BYTES).

Modules: records (names, lines, summaries), files (file operations, limits, the lock), detach
(the detached child), reading (StoreReader), writing (Store, the spool, compaction, ``init_store``).
"""
from __future__ import annotations

from .files import (
                    ACK,
                    HISTORY,
                    LATEST,
                    LOCK,
                    MARKER,
                    MAX_HISTORY_BYTES,
                    MAX_RECORD_BYTES,
                    SUMMARY,
                    Flock,
                    atomic_write,
                    read_many,
)
from .pairs import BenchmarkHistory as BenchmarkHistory  # benchmark jobs' aggregates (pairs.py)
from .pairs import PairHistory as PairHistory  # the pair history of multi-node all-reduce runs (pairs.py)
from .reading import StoreReader, bounded
from .records import StoreError, check_node_name, encode, summarize, summary_problem
from .series import SERIES as SERIES  # the compact per-node metric series `gpuhc report` reads (series.py)
from .writing import Store, init_store, record_safely

__all__ = ["ACK", "HISTORY", "LATEST", "LOCK", "MARKER", "MAX_HISTORY_BYTES", "MAX_RECORD_BYTES", "SUMMARY",
           "Flock", "Store", "StoreError", "StoreReader", "atomic_write", "bounded", "check_node_name", "encode",
           "init_store", "read_many", "record_safely", "summarize", "summary_problem"]
