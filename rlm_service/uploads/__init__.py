"""Uploaded contexts: stored on disk for a short time, named by a ref in requests."""

from rlm_service.uploads.file import ContextFile
from rlm_service.uploads.store import ContextNotFound, ContextStore, ContextTooLarge, Upload

__all__ = ["ContextFile", "ContextNotFound", "ContextStore", "ContextTooLarge", "Upload"]
