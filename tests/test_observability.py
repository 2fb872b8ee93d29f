"""Every MMSBError from a public buffer call reaches the mmsb_on_error hook with its context."""
import logging

import numpy as np
import pytest

import mmsb
from mmsb import errors, plugins


class _Observer:
    def __init__(self):
        self.seen = []

    @mmsb.hookimpl
    def mmsb_on_error(self, error, context):
        self.seen.append((type(error), context.get("op")))


@pytest.fixture
def observer():
    obs = _Observer()
    name = plugins.register_plugin(obs, "test-observer")
    try:
        yield obs
    finally:
        plugins.unregister_plugin(name)


def test_errors_reach_the_hook(observer, caplog):
    buf = mmsb.open(None)
    p = buf.create_page("x", 3)
    with caplog.at_level(logging.DEBUG, logger="mmsb"):
        with pytest.raises(errors.InvalidDeltaError):
            buf.write(p, [1.0], index=[7])
        with pytest.raises(errors.PageExistsError):
            buf.create_page("x", 3)
        with pytest.raises(errors.HistoryError):
            buf.at(99)
    assert observer.seen == [(errors.InvalidDeltaError, "write"), (errors.PageExistsError, "create_page"),
                             (errors.HistoryError, "at")]
    assert "InvalidDeltaError" in caplog.text


def test_errors_of_transactions_and_pages_reach_the_hook(observer):
    """ConflictError from tx.commit(), an intent conflict at open, and errors from Page.read arrive too,
    each once, with the "op" key."""
    buf = mmsb.open(None)
    p = buf.create_page("x", 4)
    tx = buf.transaction()
    tx.read(p, [1])
    buf.write(p, [5.0], index=[1])
    with pytest.raises(errors.ConflictError):
        tx.commit()
    held = buf.transaction(intents=[(p, [2])])
    with pytest.raises(errors.ConflictError):
        buf.transaction(intents=[(p, [2, 3])])
    held.abort()
    with pytest.raises(errors.InvalidDeltaError):
        p.read([9])
    assert observer.seen == [(errors.ConflictError, "transaction.commit"),
                             (errors.ConflictError, "transaction"), (errors.InvalidDeltaError, "page.read")]


def test_a_failing_observer_does_not_mask_the_error():
    class Broken:
        @mmsb.hookimpl
        def mmsb_on_error(self, error, context):
            raise RuntimeError("observer bug")

    name = plugins.register_plugin(Broken(), "broken-observer")
    try:
        buf = mmsb.open(None)
        with pytest.raises(errors.PageNotFoundError):
            buf.write("nope", np.zeros(1))
    finally:
        plugins.unregister_plugin(name)
