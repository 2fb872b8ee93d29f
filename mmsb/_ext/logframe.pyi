"""Type stubs for the compiled log framing kernel (twin: ``mmsb._ref.logframe``)."""
from typing import Any

__all__ = ["crc32c", "frame_records", "hardware"]

def hardware() -> bool:
    """Whether CRC32C runs on the SSE4.2 instruction here (else on tables)."""

def crc32c(data: Any, value: int = 0, soft: bool = False) -> int:
    """CRC32C of ``data`` continuing ``value`` (``crc32c.crc32c``'s convention)."""

def frame_records(records: list, epoch: int, txid: int, salt: bytes) -> tuple[list, int]:
    """Frame ``[(record type, [payload buffers])]``: ``(buffers, total length)``."""
