"""MONAI dictionary transforms: cine ED/ES pairs, DICOM series loading, 2D image/mask checks, mask <-> point cloud."""

from fairmonai.io.dicom import LoadDicomSeriesd
from fairmonai.transforms.cine import CineEDESd, CineNeighbourhoodd, LoadCineSubjectd
from fairmonai.transforms.image2d import CheckFiniteImaged, CheckImageMaskShaped, CheckLabelSetd, ToGrayscaled
from fairmonai.transforms.point_cloud import MaskToPointCloudd, PointCloudToMaskd

__all__ = [
    "CheckFiniteImaged",
    "CheckImageMaskShaped",
    "CheckLabelSetd",
    "CineEDESd",
    "CineNeighbourhoodd",
    "LoadCineSubjectd",
    "LoadDicomSeriesd",
    "MaskToPointCloudd",
    "PointCloudToMaskd",
    "ToGrayscaled",
]
