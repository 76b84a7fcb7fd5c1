from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetCallerRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Caller(_message.Message):
    __slots__ = ("object", "organization_id", "project_id", "role", "admin", "writes", "key_id", "open_access")
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_ACCESS_FIELD_NUMBER: _ClassVar[int]
    object: str
    organization_id: str
    project_id: str
    role: str
    admin: bool
    writes: bool
    key_id: str
    open_access: bool
    def __init__(self, object: _Optional[str] = ..., organization_id: _Optional[str] = ..., project_id: _Optional[str] = ..., role: _Optional[str] = ..., admin: _Optional[bool] = ..., writes: _Optional[bool] = ..., key_id: _Optional[str] = ..., open_access: _Optional[bool] = ...) -> None: ...
