"""Optional Python packages: which step needs which, whether they are importable, and a clear error when not.

Slicer bundles numpy, scipy, SimpleITK and VTK (its SuperBuild's External_python-numpy, -scipy and
-SimpleITK), not scikit-image, safetensors, matplotlib or torch. The
library imports those inside the functions that need them; `import_required` turns a missing one into a
`MissingPackage` error that names the package, the step that needs it and the pip requirement, and the Slicer
module asks `missing(packages_for_run(...))` before Apply so that it can offer to install them (torch comes through the
PyTorch extension there). Standard library only: the module loads this at Slicer's start-up.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from .errors import InputError


@dataclass(frozen=True)
class OptionalPackage:
    """An importable module, the pip requirement that provides it and what it is used for."""

    module: str
    requirement: str
    purpose: str


SCIKIT_IMAGE = OptionalPackage("skimage", "scikit-image>=0.22",
                               "the liver extraction (a watershed that cuts the liver from touching organs)")
SAFETENSORS = OptionalPackage("safetensors", "safetensors>=0.4", "loading the lesion classifier's weights")
TORCH = OptionalPackage("torch", "torch", "the lesion classifier")
MATPLOTLIB = OptionalPackage("matplotlib", "matplotlib>=3.7", "the PNG figures")
HIGHDICOM = OptionalPackage("highdicom", "highdicom>=0.22",
                            "the DICOM SEG output (segmentation.dcm) of a CT read from DICOM")


class MissingPackage(InputError):
    """A step needs a Python package that is not installed; the message names it and how to install it."""

    def __init__(self, package: OptionalPackage):
        self.package = package
        super().__init__(
            f"{package.purpose[0].upper()}{package.purpose[1:]} needs the Python package '{package.module}', which "
            f"is not installed: install it with pip install \"{package.requirement}\" (in Slicer: the module "
            "offers to install it on Apply)."
        )


def is_installed(package: OptionalPackage) -> bool:
    """Whether the package's top-level module can be imported (found on the path; not imported)."""
    return importlib.util.find_spec(package.module.split(".")[0]) is not None


def import_required(package: OptionalPackage, submodule: str = ""):
    """Import `package.module` (or its `submodule`, e.g. 'segmentation'); MissingPackage when it is absent."""
    name = f"{package.module}.{submodule}" if submodule else package.module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == package.module.split(".")[0]:
            raise MissingPackage(package) from None
        raise


def packages_for_run(liver_mask_given: bool, classify: bool, figures: bool = False) -> list[OptionalPackage]:
    """The optional packages a pipeline run needs: scikit-image to extract the liver (none when a liver mask is
    given), safetensors and torch to classify, matplotlib for figures."""
    needed = [] if liver_mask_given else [SCIKIT_IMAGE]
    if classify:
        needed += [SAFETENSORS, TORCH]
    if figures:
        needed.append(MATPLOTLIB)
    return needed


def missing(packages: list[OptionalPackage]) -> list[OptionalPackage]:
    """Those of `packages` that are not installed, in order."""
    return [p for p in packages if not is_installed(p)]
