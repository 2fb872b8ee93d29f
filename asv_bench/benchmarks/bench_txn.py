import os
import shutil
import tempfile
import threading

import numpy as np

import mmsb


class GroupCommit:
    """40 commits split over 1, 2 or 4 threads with mmsb.with_transaction, disjoint pages, fsync."""
    params = [1, 2, 4]
    param_names = ["threads"]
    number = 1
    repeat = 3

    def setup(self, nt):
        self.d = tempfile.mkdtemp(prefix="mmsb-asv-txn-")
        self.buf = mmsb.open(os.path.join(self.d, "store"), mode="w", durability="fsync")
        self.pages = [self.buf.create_page(f"t{i}", 2048) for i in range(nt)]
        self.vals = np.random.default_rng(9).random(2048)

    def teardown(self, nt):
        self.buf.close()
        shutil.rmtree(self.d, ignore_errors=True)

    def time_40_commits(self, nt):
        def work(p):
            for _ in range(40 // nt):
                mmsb.with_transaction(self.buf, lambda tx: tx.write(p, self.vals))
        ths = [threading.Thread(target=work, args=(p,)) for p in self.pages]
        for t in ths:
            t.start()
        for t in ths:
            t.join()


class Spill:
    """Reading spilled 1 MiB pages under a memory limit of half the pages vs numpy.load."""
    number = 1
    repeat = 3

    def setup(self):
        self.d = tempfile.mkdtemp(prefix="mmsb-asv-spill-")
        rng = np.random.default_rng(10)
        self.arrays = [rng.random(2**17) for _ in range(8)]
        for i, a in enumerate(self.arrays):
            np.save(os.path.join(self.d, f"p{i}.npy"), a)
        self.buf = mmsb.open(os.path.join(self.d, "store"), mode="w", durability="none", memory_limit=4 * 2**20)
        self.pages = [self.buf.create_page(f"s{i}", a.size) for i, a in enumerate(self.arrays)]
        for p, a in zip(self.pages, self.arrays):
            self.buf.write(p, a)

    def teardown(self):
        self.buf.close()
        shutil.rmtree(self.d, ignore_errors=True)

    def time_mmsb_read_spilled_x8(self):
        for p in self.pages:
            p.read()

    def time_numpy_load_x8(self):
        for i in range(8):
            np.load(os.path.join(self.d, f"p{i}.npy"))
