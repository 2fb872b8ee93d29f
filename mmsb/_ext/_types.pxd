# cython: language_level=3
"""Shared kernel types and op helpers for the mmsb Cython modules.

``numeric_t`` is the fused element type of every page kernel, ``index_t`` that of a CSR's column indices (int32
where the columns fit, halving their memory traffic; int64 otherwise) (bool pages are passed as uint8 views; the caller
maps or -> max and and -> min). The op codes equal those of ``mmsb/_ops.py``. Integer plus/times wrap modulo
2**bits like numpy (computed in the unsigned type, so no signed overflow happens in C).
"""
from libc.stdint cimport (int8_t, int16_t, int32_t, int64_t,
                          uint8_t, uint16_t, uint32_t, uint64_t)

ctypedef fused numeric_t:
    int8_t
    int16_t
    int32_t
    int64_t
    uint8_t
    uint16_t
    uint32_t
    uint64_t
    float
    double

ctypedef fused index_t:
    int32_t
    int64_t

cdef enum:
    OP_ASSIGN = -1
    OP_PLUS = 0
    OP_TIMES = 1
    OP_MIN = 2
    OP_MAX = 3


cdef inline bint valid_op(int op) noexcept nogil:
    """True for a known op code."""
    return OP_ASSIGN <= op <= OP_MAX


cdef inline numeric_t op_plus(numeric_t a, numeric_t b) noexcept nogil:
    """a + b, wrapping for integers."""
    if numeric_t is int8_t:
        return <int8_t>(<uint8_t>a + <uint8_t>b)
    elif numeric_t is int16_t:
        return <int16_t>(<uint16_t>a + <uint16_t>b)
    elif numeric_t is int32_t:
        return <int32_t>(<uint32_t>a + <uint32_t>b)
    elif numeric_t is int64_t:
        return <int64_t>(<uint64_t>a + <uint64_t>b)
    elif numeric_t is uint8_t:
        return <uint8_t>(a + b)
    elif numeric_t is uint16_t:
        return <uint16_t>(a + b)
    else:
        return a + b


cdef inline numeric_t op_times(numeric_t a, numeric_t b) noexcept nogil:
    """a * b, wrapping for integers."""
    if numeric_t is int8_t:
        return <int8_t>(<uint32_t><uint8_t>a * <uint32_t><uint8_t>b)
    elif numeric_t is int16_t:
        return <int16_t>(<uint32_t><uint16_t>a * <uint32_t><uint16_t>b)
    elif numeric_t is int32_t:
        return <int32_t>(<uint32_t>a * <uint32_t>b)
    elif numeric_t is int64_t:
        return <int64_t>(<uint64_t>a * <uint64_t>b)
    elif numeric_t is uint8_t:
        return <uint8_t>(<uint32_t>a * <uint32_t>b)
    elif numeric_t is uint16_t:
        return <uint16_t>(<uint32_t>a * <uint32_t>b)
    else:
        return a * b


cdef inline numeric_t op_min(numeric_t a, numeric_t b) noexcept nogil:
    """b if b < a else a (a NaN in a is kept, a NaN in b is ignored)."""
    return b if b < a else a


cdef inline numeric_t op_max(numeric_t a, numeric_t b) noexcept nogil:
    """b if b > a else a (a NaN in a is kept, a NaN in b is ignored)."""
    return b if b > a else a


cdef inline numeric_t apply_op(int op, numeric_t a, numeric_t b) noexcept nogil:
    """op(a, b); OP_ASSIGN returns b. An unknown op returns a (callers validate first)."""
    if op == OP_PLUS:
        return op_plus(a, b)
    elif op == OP_TIMES:
        return op_times(a, b)
    elif op == OP_MIN:
        return op_min(a, b)
    elif op == OP_MAX:
        return op_max(a, b)
    elif op == OP_ASSIGN:
        return b
    return a
