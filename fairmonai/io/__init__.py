"""Readers and writers for the formats hospitals hold: manifests, DICOM series, NIfTI, UK Biobank-style cine."""

from fairmonai.io.manifest import read_manifest, write_manifest

__all__ = ["read_manifest", "write_manifest"]
