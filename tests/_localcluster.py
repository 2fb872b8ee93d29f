"""A 2-worker distributed.LocalCluster on loopback for the Dask tests (the environment is restored after)."""
import contextlib
import os


@contextlib.contextmanager
def local_client(by_value=None):
    """A client of a fresh cluster; ``by_value``: a test module whose functions the workers get pickled by value
    (they cannot import it)."""
    import distributed

    saved = dict(os.environ)
    if by_value is not None:
        import cloudpickle

        cloudpickle.register_pickle_by_value(by_value)
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None, host="127.0.0.1") as cluster:
            with distributed.Client(cluster) as c:
                yield c
    finally:
        if by_value is not None:
            cloudpickle.unregister_pickle_by_value(by_value)
        os.environ.clear()
        os.environ.update(saved)
