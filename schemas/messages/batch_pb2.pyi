from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class FlowBatch(_message.Message):
    __slots__ = ("cluster", "collector", "responses", "sequence", "origins", "framed", "lost_ranges")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ORIGINS_FIELD_NUMBER: _ClassVar[int]
    FRAMED_FIELD_NUMBER: _ClassVar[int]
    LOST_RANGES_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    collector: str
    responses: _containers.RepeatedScalarFieldContainer[bytes]
    sequence: int
    origins: _containers.RepeatedScalarFieldContainer[str]
    framed: bytes
    lost_ranges: _containers.RepeatedCompositeFieldContainer[LostRange]
    def __init__(self, cluster: str | None = ..., collector: str | None = ..., responses: _Iterable[bytes] | None = ..., sequence: int | None = ..., origins: _Iterable[str] | None = ..., framed: bytes | None = ..., lost_ranges: _Iterable[LostRange | _Mapping] | None = ...) -> None: ...

class LostRange(_message.Message):
    __slots__ = ("node", "after_ns", "before_ns")
    NODE_FIELD_NUMBER: _ClassVar[int]
    AFTER_NS_FIELD_NUMBER: _ClassVar[int]
    BEFORE_NS_FIELD_NUMBER: _ClassVar[int]
    node: str
    after_ns: int
    before_ns: int
    def __init__(self, node: str | None = ..., after_ns: int | None = ..., before_ns: int | None = ...) -> None: ...
