"""Files and uploads: ``/v1/files`` and ``/v1/uploads``, as OpenAI's schema has them (``OpenAIFile``,
``ListFilesResponse``, ``DeleteFileResponse``, ``Upload``, ``UploadPart``, ``CreateUploadRequest``,
``CompleteUploadRequest``), and Tunery's two extensions (a file's validation report, a presigned download URL)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from api.protocol.base import CursorPage, OpenAIObject, OpenAIRequest, OpenAIResponse, omitted

# What a client may upload a file for (OpenAI's CreateFileRequest.purpose; tunery.db.models.UPLOAD_PURPOSES).
Purpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]
# What a file can have: an upload's purpose, or a job's results (written by Tunery, never uploaded).
FilePurpose = Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals", "fine-tune-results"]
FileStatus = Literal["uploaded", "processed", "error"]
UploadStatus = Literal["pending", "completed", "cancelled", "expired"]

MIN_EXPIRY, MAX_EXPIRY = 3600, 2592000  # FileExpirationAfter.seconds: 1 hour to 30 days


# ---- requests ----------------------------------------------------------------------------------------------------
class ExpiresAfter(OpenAIObject):
    """OpenAI's FileExpirationAfter: the file expires ``seconds`` after it was created."""

    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_EXPIRY, le=MAX_EXPIRY)


class CreateFileRequest(OpenAIRequest):
    """``POST /files`` without the file itself, which the service reads as a stream beside the request."""

    purpose: Purpose
    filename: str | None = Field(None, description="The uploaded file's name as the client sent it.")
    expires_after: ExpiresAfter | None = None


class ListFilesRequest(OpenAIRequest):
    """``GET /files``'s query."""

    purpose: str | None = None
    limit: int = Field(10000, ge=1)
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None


class CreateUploadRequest(OpenAIRequest):
    filename: str = Field(min_length=1, max_length=512)
    purpose: Purpose
    bytes: int = Field(ge=1)
    mime_type: str = Field(min_length=1, max_length=256)
    # The expiration policy of the File made on completion (the Upload itself always expires
    # TUNERY_UPLOAD_EXPIRY_SECONDS after creation).
    expires_after: ExpiresAfter | None = None


class CompleteUploadRequest(OpenAIRequest):
    part_ids: list[str] = Field(min_length=1, description="The ordered list of Part IDs.")
    md5: str | None = None


# ---- responses ---------------------------------------------------------------------------------------------------
class FileObject(OpenAIResponse):
    """OpenAI's ``OpenAIFile``."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = omitted("When the file expires; absent when it does not.")
    filename: str
    purpose: FilePurpose
    status: FileStatus
    status_details: str | None = omitted("Why a training file failed validation; absent otherwise.")


class FileList(CursorPage[FileObject]):
    """OpenAI's ``ListFilesResponse``."""


class FileDeleted(OpenAIResponse):
    """OpenAI's ``DeleteFileResponse``."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool


class Upload(OpenAIResponse):
    """OpenAI's ``Upload``: ``file`` is null until the upload is completed."""

    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    filename: str
    purpose: Purpose
    status: UploadStatus
    expires_at: int
    file: FileObject | None = None


class UploadPart(OpenAIResponse):
    """OpenAI's ``UploadPart``."""

    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str


class FileValidationReport(OpenAIResponse):
    """Tunery's extension ``GET /files/{id}/validation``: a training file's validation report (format, counts,
    line errors, duplicates, token statistics: scheduler/validation.py writes it), or while there is none its
    status (``pending``, or the file's status with ``status_details``)."""

    model_config = ConfigDict(extra="allow")  # the report's sections, as the validator wrote them

    object: Literal["file.validation"] = "file.validation"
    file_id: str
    status: str


class FileURL(OpenAIResponse):
    """Tunery's extension ``GET /files/{id}/url``: a presigned URL to the object store, valid until ``expires_at``."""

    object: Literal["file.url"] = "file.url"
    id: str
    url: str
    expires_at: int
