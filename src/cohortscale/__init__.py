"""cohortscale: population imaging cohorts from DICOM to image-derived phenotypes, on Dask."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cohortscale")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from cohortscale.io.store import open_cohort

__all__ = ["__version__", "open_cohort"]
