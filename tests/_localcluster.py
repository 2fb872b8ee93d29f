"""A 2-worker distributed.LocalCluster on loopback for the Dask tests (the environment is restored after)."""
import contextlib
import os


@contextlib.contextmanager
def local_client():
    import distributed

    saved = dict(os.environ)
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None, host="127.0.0.1") as cluster:
            with distributed.Client(cluster) as c:
                yield c
    finally:
        os.environ.clear()
        os.environ.update(saved)
