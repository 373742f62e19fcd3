"""Kafka protocol requests that aiokafka's admin client does not offer."""

from __future__ import annotations

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Int64, Schema, String

# -- DescribeLogDirs (API key 35) ---------------------------------------------
# aiokafka 0.14 has no admin call for it; v1 is the oldest version Kafka 4 still
# serves (KIP-896) and has the same fields as v0.


class _DescribeLogDirsResponse_v1(Response):  # type: ignore[misc]
    API_KEY = 35
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", Array(
            ("error_code", Int16),
            ("log_dir", String("utf-8")),
            ("topics", Array(
                ("name", String("utf-8")),
                ("partitions", Array(
                    ("partition_index", Int32),
                    ("partition_size", Int64),
                    ("offset_lag", Int64),
                    ("is_future_key", Boolean),
                )),
            )),
        )),
    )


class _DescribeLogDirsRequest_v1(RequestStruct):  # type: ignore[misc]
    API_KEY = 35
    API_VERSION = 1
    RESPONSE_TYPE = _DescribeLogDirsResponse_v1
    SCHEMA = Schema(("topics", Array(("topic", String("utf-8")), ("partitions", Array(Int32)))))


class DescribeLogDirsRequest(Request[_DescribeLogDirsRequest_v1]):  # type: ignore[misc]
    """The sizes of the replicas a broker holds of the given partitions, per log directory."""

    API_KEY = 35

    def __init__(self, topic: str, partitions: list[int]) -> None:
        self._topics = [(topic, partitions)]

    def build(self, request_struct_class: type[_DescribeLogDirsRequest_v1]) -> _DescribeLogDirsRequest_v1:
        return request_struct_class(self._topics)
