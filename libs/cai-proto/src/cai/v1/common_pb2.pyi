from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Principal(_message.Message):
    __slots__ = ("tenant_id", "subject", "tier", "max_running_runs", "max_queued_runs")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNING_RUNS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_RUNS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    subject: str
    tier: str
    max_running_runs: int
    max_queued_runs: int
    def __init__(self, tenant_id: _Optional[str] = ..., subject: _Optional[str] = ..., tier: _Optional[str] = ..., max_running_runs: _Optional[int] = ..., max_queued_runs: _Optional[int] = ...) -> None: ...
