"""MONAI dictionary transforms: cine ED/ES pairs, DICOM series loading."""

from fairmonai.io.dicom import LoadDicomSeriesd
from fairmonai.transforms.cine import CineEDESd, CineNeighbourhoodd, LoadCineSubjectd

__all__ = ["CineEDESd", "CineNeighbourhoodd", "LoadCineSubjectd", "LoadDicomSeriesd"]
