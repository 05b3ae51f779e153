from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetaRequest(_message.Message):
    __slots__ = ("op", "args", "client_id", "seq", "uid", "gid", "gids")
    OP_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    GIDS_FIELD_NUMBER: _ClassVar[int]
    op: str
    args: bytes
    client_id: int
    seq: int
    uid: int
    gid: int
    gids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, op: _Optional[str] = ..., args: _Optional[bytes] = ..., client_id: _Optional[int] = ..., seq: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., gids: _Optional[_Iterable[int]] = ...) -> None: ...

class MetaReply(_message.Message):
    __slots__ = ("errno", "message", "result", "leader")
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    errno: int
    message: str
    result: bytes
    leader: str
    def __init__(self, errno: _Optional[int] = ..., message: _Optional[str] = ..., result: _Optional[bytes] = ..., leader: _Optional[str] = ...) -> None: ...

class DiskInfo(_message.Message):
    __slots__ = ("index", "path", "total_bytes", "used_bytes", "free_bytes", "state", "chunks")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    index: int
    path: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    state: str
    chunks: int
    def __init__(self, index: _Optional[int] = ..., path: _Optional[str] = ..., total_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., free_bytes: _Optional[int] = ..., state: _Optional[str] = ..., chunks: _Optional[int] = ...) -> None: ...

class ChunkRef(_message.Message):
    __slots__ = ("chunk_id", "version", "disk", "length")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    chunk_id: int
    version: int
    disk: int
    length: int
    def __init__(self, chunk_id: _Optional[int] = ..., version: _Optional[int] = ..., disk: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("cluster_id", "server_id", "address", "disks", "chunks")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    server_id: int
    address: str
    disks: _containers.RepeatedCompositeFieldContainer[DiskInfo]
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkRef]
    def __init__(self, cluster_id: _Optional[str] = ..., server_id: _Optional[int] = ..., address: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[DiskInfo, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[ChunkRef, _Mapping]]] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: int
    def __init__(self, session: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("server_id", "session", "disks", "added", "removed", "bytes_read", "bytes_written")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    server_id: int
    session: int
    disks: _containers.RepeatedCompositeFieldContainer[DiskInfo]
    added: _containers.RepeatedCompositeFieldContainer[ChunkRef]
    removed: _containers.RepeatedCompositeFieldContainer[ChunkRef]
    bytes_read: int
    bytes_written: int
    def __init__(self, server_id: _Optional[int] = ..., session: _Optional[int] = ..., disks: _Optional[_Iterable[_Union[DiskInfo, _Mapping]]] = ..., added: _Optional[_Iterable[_Union[ChunkRef, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[ChunkRef, _Mapping]]] = ..., bytes_read: _Optional[int] = ..., bytes_written: _Optional[int] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("reregister", "delete")
    REREGISTER_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    reregister: bool
    delete: _containers.RepeatedCompositeFieldContainer[ChunkRef]
    def __init__(self, reregister: _Optional[bool] = ..., delete: _Optional[_Iterable[_Union[ChunkRef, _Mapping]]] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("chunk_id", "version", "offset", "length")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    chunk_id: int
    version: int
    offset: int
    length: int
    def __init__(self, chunk_id: _Optional[int] = ..., version: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class ReadReply(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("chunk_id", "version", "expect_version", "chain", "offset", "data")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    chunk_id: int
    version: int
    expect_version: int
    chain: _containers.RepeatedScalarFieldContainer[str]
    offset: int
    data: bytes
    def __init__(self, chunk_id: _Optional[int] = ..., version: _Optional[int] = ..., expect_version: _Optional[int] = ..., chain: _Optional[_Iterable[str]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class WriteReply(_message.Message):
    __slots__ = ("written", "ok", "failed")
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    written: int
    ok: _containers.RepeatedScalarFieldContainer[str]
    failed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, written: _Optional[int] = ..., ok: _Optional[_Iterable[str]] = ..., failed: _Optional[_Iterable[str]] = ...) -> None: ...

class TruncateRequest(_message.Message):
    __slots__ = ("chunk_id", "version", "expect_version", "length")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    chunk_id: int
    version: int
    expect_version: int
    length: int
    def __init__(self, chunk_id: _Optional[int] = ..., version: _Optional[int] = ..., expect_version: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class TruncateReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
