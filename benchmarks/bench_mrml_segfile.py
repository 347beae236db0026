"""Speed of the .seg.nrrd writer/reader and the MRML bridge, beside Slicer's own code doing the same work.

Baselines (slicer-core): vtkMRMLSegmentationStorageNode.WriteData / ReadData for the same segmentation, and
slicer.util.arrayFromSegmentBinaryLabelmap (export through a temporary label-map node) for one segment.
Data: the real 3D-IRCADb 1.1 CT at full resolution (512 x 512 x 129) with its liver, vessel and Couinaud
masks when ../shared/data is present, else a full-size phantom. Each timing is the best of --repeat runs.

    PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/bench_mrml_segfile.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "ircadb1_1"


def best_of(repeat: int, function):
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return min(times), value


def load_case():
    from LiverLocalizationLib import io, labels, segfile

    if (REAL / "ct.nii.gz").exists():
        ct = io.read_image(REAL / "ct.nii.gz")
        couinaud = sitk.GetArrayFromImage(io.read_image(REAL / "couinaud_labels.nii.gz"))
        liver = sitk.GetArrayFromImage(io.read_image(REAL / "mask_liver.nii.gz")) > 0
        vessels = sitk.GetArrayFromImage(io.read_image(REAL / "mask_vessels_intrahepatic.nii.gz")) > 0
        name = "3D-IRCADb 1.1"
    else:
        from LiverLocalizationLib.phantom import generate_phantom

        phantom = generate_phantom(seed=7, size="full")
        ct = phantom.ct
        couinaud = sitk.GetArrayFromImage(phantom.truth_couinaud)
        liver = couinaud > 0
        vessels = np.isin(sitk.GetArrayFromImage(phantom.truth_tissue), (3, 4))
        name = "phantom seed 7 (full)"
    specs = [segfile.SegmentSpec("liver", "Liver", liver, labels.LIVER),
             segfile.SegmentSpec("vessels", "Liver vessels", vessels, labels.VESSELS)]
    specs += [segfile.SegmentSpec(f"couinaud_{labels.COUINAUD_ROMAN[k]}", style.name, couinaud == k, style)
              for k, style in labels.COUINAUD_STYLES.items()]
    return name, ct, specs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    import slicer

    from LiverLocalizationLib import mrml, segfile

    name, ct, specs = load_case()
    print(f"{name}: grid {ct.GetSize()}, {len(specs)} segments; best of {args.repeat}")
    scene, _ = mrml.create_headless_scene()
    volume = mrml.image_to_volume_node(ct, "CT")
    node = mrml.write_segments(None, volume, specs)
    tmp = Path(tempfile.mkdtemp())
    rows = []

    ours_w, path = best_of(args.repeat, lambda: segfile.write_seg_nrrd(tmp / "ours.seg.nrrd", ct, specs))
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp / "slicer.seg.nrrd"))
    storage.SetCropToMinimumExtent(True)
    slicer_w, _ = best_of(args.repeat, lambda: storage.WriteData(node))
    rows.append(("write .seg.nrrd", ours_w, "segfile.write_seg_nrrd (masks → file)", slicer_w,
                 "vtkMRMLSegmentationStorageNode.WriteData (node → file, cropped)"))
    sizes = (path.stat().st_size / 1e6, (tmp / "slicer.seg.nrrd").stat().st_size / 1e6)

    ours_r, _ = best_of(args.repeat, lambda: segfile.read_seg_nrrd(path))

    def slicer_read():
        loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        reader = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        reader.SetFileName(str(path))
        reader.ReadData(loaded)
        scene.RemoveNode(reader)
        scene.RemoveNode(loaded)

    slicer_r, _ = best_of(args.repeat, slicer_read)
    rows.append(("read .seg.nrrd", ours_r, "segfile.read_seg_nrrd (file → full-grid masks)", slicer_r,
                 "vtkMRMLSegmentationStorageNode.ReadData (file → node)"))

    ours_e, mask = best_of(args.repeat, lambda: mrml.segment_to_array(node, "liver", volume))
    util_e, util_mask = best_of(args.repeat, lambda: slicer.util.arrayFromSegmentBinaryLabelmap(node, "liver", volume))
    assert np.array_equal(mask, util_mask > 0), "segment exports differ"
    rows.append(("export one segment", ours_e, "mrml.segment_to_array (no scene nodes)", util_e,
                 "slicer.util.arrayFromSegmentBinaryLabelmap (temporary label-map node)"))

    ours_v, _ = best_of(args.repeat, lambda: mrml.volume_node_to_image(volume))
    ours_s, _ = best_of(1, lambda: mrml.write_segments(node, volume, specs))
    for task, ours, ours_what, base, base_what in rows:
        print(f"{task:20s} {ours:7.3f} s  {ours_what}\n{'':20s} {base:7.3f} s  {base_what}   ratio {base / ours:5.2f}x")
    print(f"file size: segfile {sizes[0]:.2f} MB, Slicer {sizes[1]:.2f} MB")
    print(f"volume_node_to_image {ours_v:.3f} s; write_segments rerun with edit checks ({len(specs)} segments) {ours_s:.3f} s")


if __name__ == "__main__":
    main()
