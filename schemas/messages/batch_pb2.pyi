# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class FlowBatch(_message.Message):
    __slots__ = ("cluster", "collector", "responses", "sequence", "origins", "framed")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ORIGINS_FIELD_NUMBER: _ClassVar[int]
    FRAMED_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    collector: str
    responses: _containers.RepeatedScalarFieldContainer[bytes]
    sequence: int
    origins: _containers.RepeatedScalarFieldContainer[str]
    framed: bytes
    def __init__(self, cluster: _Optional[str] = ..., collector: _Optional[str] = ..., responses: _Optional[_Iterable[bytes]] = ..., sequence: _Optional[int] = ..., origins: _Optional[_Iterable[str]] = ..., framed: _Optional[bytes] = ...) -> None: ...
