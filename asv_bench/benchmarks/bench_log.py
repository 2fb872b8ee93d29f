import os
import shutil
import sqlite3
import tempfile

import numpy as np

import mmsb


class Commit16KiB:
    """One 16 KiB delta per commit under durability='fsync' vs raw write+fsync and SQLite WAL FULL."""
    number = 1
    repeat = 5

    def setup(self):
        self.d = tempfile.mkdtemp(prefix="mmsb-asv-log-")
        self.vals = np.random.default_rng(5).random(2048)
        self.blob = self.vals.tobytes()
        self.buf = mmsb.open(os.path.join(self.d, "store"), mode="w", durability="fsync")
        self.p = self.buf.create_page("p", 2048)
        self.fd = os.open(os.path.join(self.d, "raw"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.con = sqlite3.connect(os.path.join(self.d, "db"), isolation_level=None)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=FULL")
        self.con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        self.pages = [self.buf.create_page(f"b{i}", 2048) for i in range(50)]

    def teardown(self):
        self.buf.close()
        os.close(self.fd)
        self.con.close()
        shutil.rmtree(self.d, ignore_errors=True)

    def time_mmsb_commit_x20(self):
        for _ in range(20):
            self.buf.write(self.p, self.vals)

    def time_raw_write_fsync_x20(self):
        for _ in range(20):
            os.write(self.fd, self.blob)
            os.fsync(self.fd)

    def time_sqlite_wal_full_x20(self):
        for _ in range(20):
            self.con.execute("BEGIN")
            self.con.execute("INSERT INTO t (v) VALUES (?)", (self.blob,))
            self.con.execute("COMMIT")

    def time_mmsb_batch50(self):
        with self.buf.batch():
            for p in self.pages:
                self.buf.write(p, self.vals)

    def time_sqlite_wal_full_batch50(self):
        self.con.execute("BEGIN")
        self.con.executemany("INSERT INTO t (v) VALUES (?)", [(self.blob,)] * 50)
        self.con.execute("COMMIT")
