"""Readers and writers for the formats hospitals hold: manifests, DICOM series, NIfTI, UK Biobank-style cine."""

from __future__ import annotations

import importlib
from typing import Any

from fairmonai.io.manifest import read_manifest, write_manifest

# DICOM, cine and writer functions import MONAI / nibabel / pydicom: load them on first use so that
# reading a manifest stays fast.
_LAZY = {
    "parse_age": "fairmonai.io.dicom",
    "read_dicom_attributes": "fairmonai.io.dicom",
    "load_dicom_series": "fairmonai.io.dicom",
    "attributes_from_dicom": "fairmonai.io.dicom",
    "LoadDicomSeriesd": "fairmonai.io.dicom",
    "CineSubject": "fairmonai.io.cine",
    "read_cine_subject": "fairmonai.io.cine",
    "write_synthetic_nifti": "fairmonai.io.writers",
    "write_synthetic_dicom_series": "fairmonai.io.writers",
}

__all__ = ["read_manifest", "write_manifest", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
