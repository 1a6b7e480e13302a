"""fairmonai: fairer medical-imaging models through group-aware synthesis, sampling, losses and metrics.

Built on MONAI: generators, filters and downstream models are MONAI bundles; samplers, losses,
metrics and filters are plugins discovered through Python entry points (:mod:`fairmonai.registry`).
"""

from importlib.metadata import PackageNotFoundError, version

from fairmonai.cohort import Binning, Cohort, GroupSpec, Record
from fairmonai.errors import EmptyGroupError, FairMonaiError, InputError

try:
    __version__ = version("fairmonai")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "Binning",
    "Cohort",
    "EmptyGroupError",
    "FairMonaiError",
    "GroupSpec",
    "InputError",
    "Record",
    "__version__",
]
