"""StreamerPatcher: serve s3:// / gs:// / az:// model URIs from a local directory.

For tests of code that loads models from object storage (vLLM's imports it
from this path). The bucket of a URI is replaced by a local directory:
``s3://any-bucket/models/gpt2/model.safetensors`` is read from
``<local_bucket_path>/models/gpt2/model.safetensors``. The shims are meant
to be patched in where the code under test looks its helpers up:

    patcher = StreamerPatcher(str(tmp_path))
    monkeypatch.setattr("my_loader.list_safetensors", patcher.shim_list_safetensors)
    monkeypatch.setattr("my_loader.pull_files", patcher.shim_pull_files)
    monkeypatch.setattr("my_loader.SafetensorsStreamer", patcher.create_mock_streamer)

Only the paths are rewritten: the bytes are streamed by the real
SafetensorsStreamer, so what the code under test receives is exactly what
it would stream from the store.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Collection, Iterator, List, Optional, Tuple
from urllib.parse import urlparse

import torch

from runai_model_streamer import files as _files
from runai_model_streamer.files import S3Credentials, is_azure_path, is_gs_path, is_s3_path
from runai_model_streamer.s3_utils.s3_utils import filter_allow, filter_ignore, removeprefix  # noqa: F401
from runai_model_streamer.safetensors_streamer.safetensors_streamer import (
    list_safetensors as _list_safetensors,
)
from runai_model_streamer.streamer import SafetensorsStreamer as _SafetensorsStreamer

logger = logging.getLogger(__name__)

__all__ = ["StreamerPatcher"]


class StreamerPatcher:
    """Generates stand-ins for list_safetensors, pull_files and
    SafetensorsStreamer that read object storage URIs from local_bucket_path."""

    def __init__(self, local_bucket_path: str) -> None:
        self.local_path = os.fspath(local_bucket_path)

    def is_remote_path(self, path: str) -> bool:
        """An s3://, gs:// or az:// URI (the reference: s3:// and gs:// only)."""
        return is_s3_path(path) or is_gs_path(path) or is_azure_path(path)

    def convert_remote_path_to_local_path(self, path: str) -> str:
        """The local file a URI stands for: its key under local_path. Local
        paths are returned unchanged."""
        path = os.fspath(path)
        if not self.is_remote_path(path):
            return path
        key = urlparse(path).path.lstrip("/")
        converted = os.path.join(self.local_path, key)
        logger.debug("[StreamerPatcher] %s -> %s", path, converted)
        return converted

    def convert_local_path_to_mocked_remote_path(self, local_path_result: str,
                                                 original_remote_path: str) -> str:
        """A local path under local_path turned back into a URI of the
        original's scheme and bucket; a path outside it is returned as is."""
        root = os.path.abspath(self.local_path)
        full = os.path.abspath(local_path_result)
        if os.path.commonpath([root, full]) != root:
            logger.warning("[StreamerPatcher] %s is not under %s; returned unchanged",
                           local_path_result, self.local_path)
            return local_path_result
        parsed = urlparse(original_remote_path)
        key = os.path.relpath(full, root).replace(os.sep, "/")
        return f"{parsed.scheme}://{parsed.netloc}/{key}"

    def shim_list_safetensors(self, path: str,
                              s3_credentials: Optional[S3Credentials] = None) -> List[str]:
        """list_safetensors of the local directory a URI stands for, answered
        as URIs of the same bucket."""
        local = self.convert_remote_path_to_local_path(path)
        found = _list_safetensors(local, s3_credentials)
        if not self.is_remote_path(path):
            return found
        return [self.convert_local_path_to_mocked_remote_path(p, path) for p in found]

    def shim_pull_files(self, model_path: str, dst: str,
                        allow_pattern: Optional[List[str]] = None,
                        ignore_pattern: Optional[List[str]] = None,
                        s3_credentials: Optional[S3Credentials] = None) -> None:
        """pull_files from the local directory a URI stands for: the same
        filters, the same refusal to write outside dst. A local model_path
        raises NotImplementedError, as the reference's shim does: the shim
        stands in for a download from object storage."""
        if not self.is_remote_path(model_path):
            raise NotImplementedError(
                f"pull files is not implemented for file system paths: {model_path!r} "
                "(StreamerPatcher.shim_pull_files serves s3://, gs:// and az:// URIs)"
            )
        source = self.convert_remote_path_to_local_path(model_path)
        _files.pull_files(source, dst, allow_pattern, ignore_pattern, s3_credentials)

    def create_mock_streamer(self, *args: Any, **kwargs: Any) -> "StreamerPatcher.MockSafetensorsStreamer":
        """A SafetensorsStreamer whose stream_file(s) read local files for URIs."""
        return self.MockSafetensorsStreamer(self)

    class MockSafetensorsStreamer:
        """The real SafetensorsStreamer with its paths rewritten."""

        def __init__(self, patcher: "StreamerPatcher") -> None:
            self.patcher = patcher
            self.original_streamer = _SafetensorsStreamer()

        @property
        def files_to_tensors_metadata(self) -> Any:
            return self.original_streamer.files_to_tensors_metadata

        @property
        def total_size(self) -> int:
            return self.original_streamer.total_size

        def __enter__(self) -> "StreamerPatcher.MockSafetensorsStreamer":
            self.original_streamer.__enter__()
            return self

        def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
            return self.original_streamer.__exit__(exc_type, exc_value, traceback)

        def stream_file(self, path: str, s3_credentials: Optional[S3Credentials] = None,
                        device: Optional[str] = "cpu", is_distributed: bool = False,
                        tensor_names: Optional[Collection[str]] = None,
                        owned: bool = True) -> None:
            return self.original_streamer.stream_file(
                self.patcher.convert_remote_path_to_local_path(path),
                s3_credentials=s3_credentials, device=device, is_distributed=is_distributed,
                tensor_names=tensor_names, owned=owned)

        def stream_files(self, paths: List[str], s3_credentials: Optional[S3Credentials] = None,
                         device: Optional[str] = "cpu", is_distributed: bool = False,
                         tensor_names: Optional[Collection[str]] = None,
                         owned: bool = True) -> None:
            return self.original_streamer.stream_files(
                [self.patcher.convert_remote_path_to_local_path(p) for p in paths],
                s3_credentials=s3_credentials, device=device, is_distributed=is_distributed,
                tensor_names=tensor_names, owned=owned)

        def get_tensors(self) -> Iterator[Tuple[str, torch.Tensor]]:
            return self.original_streamer.get_tensors()

        def close(self) -> None:
            self.original_streamer.close()
