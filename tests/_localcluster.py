"""A 2-worker distributed.LocalCluster on loopback for the Dask tests (the environment is restored after), and the
``client`` fixture every Dask test module takes from here (``client = client_fixture(__name__)``)."""
import contextlib
import os
import sys

import pytest


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


def client_fixture(module_name=None):
    """The module-scoped ``client`` fixture of a Dask test module: one cluster for the module's tests. With
    ``module_name`` (the module's ``__name__``) the module's own functions (derive functions, worker hooks) reach
    the workers by value."""

    @pytest.fixture(scope="module")
    def client():
        with local_client(by_value=sys.modules[module_name] if module_name else None) as c:
            yield c

    return client
