"""Small synthetic DICOM CT series written with SimpleITK, shared by the tests of DICOM input and DICOM SEG output.

Each slice's geometry is set in its own header (0020|0032 ImagePositionPatient, 0020|0037 ImageOrientationPatient),
so that a slice can be duplicated, left out, turned or shifted exactly as a damaged export would be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
UID = "1.2.826.0.1.3680043.2.1125.7.1"
OTHER_UID = "1.2.826.0.1.3680043.2.1125.7.2"
SPACING = 0.8
STEP = 2.5
CORNER = np.array([-10.0, 20.0, 100.0])


def slice_values(number: int, n: int = 12) -> np.ndarray:
    """The pixels of slice `number` (rows × columns, int16), distinct per slice so that the order can be checked."""
    return (np.arange(n * n).reshape(n, n) % 97 - 50 + 100 * number).astype(np.int16)


def write_series(folder: Path, heights, orientation=AXIAL, uid=UID, description="abdomen", prefix="slice",
                 sideways=None, orientations=None, n=12, pixels=None, tags=None, spacing=SPACING,
                 corner=CORNER) -> list[Path]:
    """Write one DICOM file per height (mm along the slice normal from `corner`), in the order given; slice k holds
    slice_values(k), or pixels[k] (rows × columns, int16) when `pixels` is given. `sideways` adds an in-plane
    offset per slice (mm, 3-vector each); `orientations` gives each slice its own ImageOrientationPatient; `tags`
    adds header fields ('gggg|eeee' → value) to every slice; `spacing` is the pixel spacing (mm, rows and columns
    alike). Returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k, height in enumerate(heights):
        cosines = np.asarray(orientations[k] if orientations else orientation, dtype=float)
        normal = np.cross(cosines[:3], cosines[3:])
        position = np.asarray(corner, dtype=float) + height * normal
        position = position + (np.asarray(sideways[k]) if sideways is not None else 0.0)
        values = slice_values(k, n) if pixels is None else np.asarray(pixels[k], dtype=np.int16)
        image = sitk.GetImageFromArray(values[None])
        image.SetSpacing((spacing, spacing, 1.0))
        header = {
            "0008|0060": "CT", "0008|103e": description, "0020|000e": uid, "0020|000d": uid + ".0",
            "0008|0018": f"{uid}.{k + 1}", "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in cosines),
            "0028|0030": f"{spacing}\\{spacing}", "0028|1052": "0", "0028|1053": "1",
            **(tags or {}),
        }
        for key, value in header.items():
            image.SetMetaData(key, value)
        file = folder / f"{prefix}{k:03d}.dcm"
        writer.SetFileName(str(file))
        writer.Execute(image)
        files.append(file)
    return files
