"""MONAI dictionary transforms: cine ED/ES pairs, DICOM series loading, 2D image/mask checks."""

from fairmonai.io.dicom import LoadDicomSeriesd
from fairmonai.transforms.cine import CineEDESd, CineNeighbourhoodd, LoadCineSubjectd
from fairmonai.transforms.image2d import CheckImageMaskShaped, ToGrayscaled

__all__ = [
    "CheckImageMaskShaped",
    "CineEDESd",
    "CineNeighbourhoodd",
    "LoadCineSubjectd",
    "LoadDicomSeriesd",
    "ToGrayscaled",
]
