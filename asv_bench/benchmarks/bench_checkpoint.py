import os
import shutil
import tempfile

import numpy as np

import mmsb


class Checkpoint:
    """8 pages of 2 MiB float64 (random): checkpoint write and reopen vs numpy.save / numpy.load."""
    number = 1
    repeat = 3

    def setup(self):
        self.d = tempfile.mkdtemp(prefix="mmsb-asv-ckpt-")
        rng = np.random.default_rng(8)
        self.arrays = [rng.random(2**18) for _ in range(8)]
        self.store = os.path.join(self.d, "store")
        with mmsb.open(self.store, mode="w", durability="fsync") as buf:
            for i, a in enumerate(self.arrays):
                buf.write(buf.create_page(f"p{i}", a.size), a)
            buf.checkpoint()
        for i, a in enumerate(self.arrays):
            np.save(os.path.join(self.d, f"p{i}.npy"), a)
        self.buf = mmsb.open(os.path.join(self.d, "w"), mode="w", durability="fsync")
        self.pages = [self.buf.create_page(f"p{i}", a.size) for i, a in enumerate(self.arrays)]
        for p, a in zip(self.pages, self.arrays):
            self.buf.write(p, a)

    def teardown(self):
        self.buf.close()
        shutil.rmtree(self.d, ignore_errors=True)

    def time_mmsb_checkpoint(self):
        self.buf.write(self.pages[0], self.arrays[0][:1], index=[0])   # new epoch: a full new checkpoint
        self.buf.checkpoint()

    def time_numpy_save_fsync(self):
        for i, a in enumerate(self.arrays):
            with open(os.path.join(self.d, f"s{i}.npy"), "wb") as f:
                np.save(f, a)
                f.flush()
                os.fsync(f.fileno())

    def time_mmsb_reopen(self):
        with mmsb.open(self.store, mode="r") as ro:
            len(ro)

    def time_numpy_load(self):
        for i in range(8):
            np.load(os.path.join(self.d, f"p{i}.npy"))
