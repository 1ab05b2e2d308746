"""Compatibility module: S3Credentials and the URI predicates at their historical path."""

from runai_model_streamer.files import (  # noqa: F401
    S3Credentials,
    is_azure_path,
    is_gs_path,
    is_s3_path,
)
