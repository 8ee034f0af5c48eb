"""kafka-python checks every fetched record batch's CRC-32C; with the `crc32c` package that check runs in C."""

from __future__ import annotations

import crc32c
from kafka.record import util


def test_kafka_python_uses_the_c_crc32c() -> None:
    # kafka/record/util.py binds calc_crc32c's default to crc32c.crc32c when the package imports
    assert util.calc_crc32c.__defaults__ == (crc32c.crc32c,)
    data = memoryview(bytes(range(256)) * 64)
    assert util.calc_crc32c(data) == util.crc32c_py(data)  # the same checksum as the pure-Python fallback
