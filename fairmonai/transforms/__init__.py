"""MONAI dictionary transforms: cine ED/ES pairs, DICOM series loading, 2D image/mask checks."""

from fairmonai.io.dicom import LoadDicomSeriesd
from fairmonai.transforms.cine import CineEDESd, CineNeighbourhoodd, LoadCineSubjectd
from fairmonai.transforms.image2d import CheckFiniteImaged, CheckImageMaskShaped, CheckLabelSetd, ToGrayscaled

__all__ = [
    "CheckFiniteImaged",
    "CheckImageMaskShaped",
    "CheckLabelSetd",
    "CineEDESd",
    "CineNeighbourhoodd",
    "LoadCineSubjectd",
    "LoadDicomSeriesd",
    "ToGrayscaled",
]
