"""Object storage tests (S3 on MinIO, GCS on fake-gcs-server, Azure Blob on
Azurite), all on 127.0.0.1.

A package so that its conftest (object_storage.conftest) does not take the
module name "conftest" that the suite's shared helpers in tests/conftest.py
are imported by.
"""
