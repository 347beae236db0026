"""Render a picture of real LiverLocalization results offscreen with Slicer's own slice views.

A headless Slicer scene (slicer-core) is built like Slicer's application; the pipeline runs through the
module's MRML bridge (LiverLocalizationLib.mrml.run_on_nodes) on

1. the real 3D-IRCADb 1.1 liver crop (2 mm) with its expert-style landmarks, when ../shared/data is present;
2. a generated phantom with lesions (ground truth known);

and each result is drawn in axial, coronal and sagittal slice views by Slicer's vtkMRMLSliceLogic (volume
reslicing, window/level) and the Segmentations 2D displayable manager (segment fills and outlines), and in a
3-D view by the Segmentations 3D displayable manager (closed surfaces), on an
offscreen VTK render window (EGL with Mesa's software driver). The panels are tiled with a caption and a
Couinaud colour legend. This is a rendering of computed results, not a mock-up of the user interface.

Needs slicer-core and an EGL library (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri); not part of the tests.

    PYTHONPATH=LiverLocalization .venv/bin/python benchmarks/render_screenshot.py \
        [--out Resources/Screenshots/results_slice_views.png] [--seed 7] [--phantom-size small]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL_CROP = ROOT.parent / "shared" / "data" / "ircadb1_1" / "liver_crop_2mm"
VIEW_SIZE = (420, 360)  # width, height of one slice view in pixels



def _render_to_pixels(window) -> np.ndarray:
    """Render an offscreen window, return its RGB pixels (top row first) and release the window."""
    import vtk
    from vtk.util import numpy_support

    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    image = grab.GetOutput()
    w, h, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3].copy()
    window.Finalize()
    return pixels

def render_slice_view(scene, app, volume, segmentation, orientation: str, center_ras, size=VIEW_SIZE,
                      field_of_view_mm: float | None = None) -> np.ndarray:
    """One Slicer slice view rendered offscreen: uint8 RGB array (height, width, 3).

    orientation: 'Axial', 'Coronal' or 'Sagittal'; center_ras: point (RAS mm) the slice passes through and
    is centred on; field_of_view_mm: width shown (default: fit the volume).
    """
    import slicer
    import vtk

    width, height = size
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app)
    logic.SetMRMLScene(scene)
    name = f"View{orientation}{id(logic) % 100000}"
    slice_node = logic.AddSliceNode(name)
    slice_node.SetOrientation(orientation)
    slice_node.SetDimensions(width, height, 1)
    composite = logic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(volume.GetID())
    logic.FitSliceToAll()
    if field_of_view_mm:
        fov = slice_node.GetFieldOfView()
        slice_node.SetFieldOfView(field_of_view_mm, field_of_view_mm * fov[1] / fov[0], fov[2])
    slice_node.JumpSliceByCentering(*[float(v) for v in center_ras])

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(width, height)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0, 0, 0)
    window.AddRenderer(renderer)
    mapper = vtk.vtkImageMapper()
    mapper.SetInputConnection(logic.GetImageDataConnection())
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    image_actor = vtk.vtkActor2D()
    image_actor.SetMapper(mapper)
    renderer.AddViewProp(image_actor)
    interactor = vtk.vtkRenderWindowInteractor()
    interactor.SetRenderWindow(window)
    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(app)
    if not factory.IsDisplayableManagerRegistered("vtkMRMLSegmentationsDisplayableManager2D"):
        factory.RegisterDisplayableManager("vtkMRMLSegmentationsDisplayableManager2D")
    group = factory.InstantiateDisplayableManagers(renderer)
    group.SetMRMLDisplayableNode(slice_node)
    segmentation.GetDisplayNode().SetVisibility2D(True)
    return _render_to_pixels(window)


def render_3d_view(scene, app, segmentation, size=VIEW_SIZE) -> np.ndarray:
    """Slicer 3-D view (Segmentations 3-D displayable manager, closed surfaces) seen from anterior-superior:
    uint8 RGB array (height, width, 3)."""
    import slicer
    import vtk

    from LiverLocalizationLib import mrml

    width, height = size
    segmentation.CreateClosedSurfaceRepresentation()
    display = segmentation.GetDisplayNode()
    seg = segmentation.GetSegmentation()
    for i in range(seg.GetNumberOfSegments()):
        segment_id = seg.GetNthSegmentID(i)
        result_id = mrml.segment_tag(seg.GetNthSegment(i), mrml.RESULT_ID_TAG) or segment_id
        opacity = {"liver": 0.0, "vessels": 0.9}.get(result_id, 1.0 if result_id.startswith("lesion_") else 0.3)
        display.SetSegmentOpacity3D(segment_id, opacity)
    view = scene.AddNewNodeByClass("vtkMRMLViewNode", f"View3D{id(segmentation) % 100000}")
    view.SetBoxVisible(False)
    view.SetAxisLabelsVisible(False)
    view.SetBackgroundColor(0.0, 0.0, 0.0)
    view.SetBackgroundColor2(0.12, 0.12, 0.16)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(width, height)
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()
    interactor.SetRenderWindow(window)
    factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(app)
    for manager in ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager", "vtkMRMLSegmentationsDisplayableManager3D"):
        if not factory.IsDisplayableManagerRegistered(manager):
            factory.RegisterDisplayableManager(manager)
    group = factory.InstantiateDisplayableManagers(renderer)
    group.SetMRMLDisplayableNode(view)
    bounds = [0.0] * 6
    segmentation.GetRASBounds(bounds)
    centre = np.array([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(*centre)
    camera.SetPosition(*(centre + np.array([0.0, 600.0, 250.0])))  # anterior (+A) and above (+S): patient's right on the left
    camera.SetViewUp(0.0, 0.0, 1.0)
    renderer.ResetCamera()
    camera.Zoom(1.25)
    return _render_to_pixels(window)


def _style_segments(segmentation) -> None:
    """Couinaud segments filled, lesions strong, vessels blue, liver as outline only."""
    from LiverLocalizationLib import mrml

    display = segmentation.GetDisplayNode()
    display.SetOpacity2DFill(0.45)
    display.SetOpacity2DOutline(1.0)
    display.SetSliceIntersectionThickness(2)
    seg = segmentation.GetSegmentation()
    for i in range(seg.GetNumberOfSegments()):
        segment_id = seg.GetNthSegmentID(i)
        result_id = mrml.segment_tag(seg.GetNthSegment(i), mrml.RESULT_ID_TAG) or segment_id
        if result_id == "liver":
            display.SetSegmentOpacity2DFill(segment_id, 0.0)
        elif result_id.startswith("lesion_"):
            display.SetSegmentOpacity2DFill(segment_id, 2.0)  # relative to the node's 0.45 → 0.9
        elif result_id == "vessels":
            display.SetSegmentOpacity2DFill(segment_id, 1.5)


def run_case(volume_image, landmarks_lps, name: str, classify: bool):
    """Load a CT and its landmarks as nodes, run the module's logic; returns (scene, app, outputs, volume)."""
    from LiverLocalizationLib import mrml
    from LiverLocalizationLib.pipeline import PipelineOptions

    scene, app = mrml.create_headless_scene()
    volume = mrml.image_to_volume_node(volume_image, name)
    display = volume.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(350, 60)
    markups = mrml.landmarks_to_markups(landmarks_lps, f"{name} landmarks")
    start = time.perf_counter()
    outputs = mrml.run_on_nodes(volume, markups, options=PipelineOptions(classify=classify))
    print(f"{name}: pipeline {time.perf_counter() - start:.1f} s, {len(outputs['result'].lesions)} lesion(s)")
    _style_segments(outputs["segmentation"])
    return scene, app, outputs, volume


def case_panels(scene, app, outputs, volume, center_ras, title: str) -> list[tuple[np.ndarray, str]]:
    views = []
    for orientation in ("Axial", "Coronal", "Sagittal"):
        pixels = render_slice_view(scene, app, volume, outputs["segmentation"], orientation, center_ras)
        views.append((pixels, f"{title} – {orientation.lower()}"))
    views.append((render_3d_view(scene, app, outputs["segmentation"]), f"{title} – 3-D, anterior"))
    return views


def compose(rows: list[list[tuple[np.ndarray, str]]], notes: list[str], caption: str, out: Path) -> Path:
    """Tile the rendered views with titles, per-row notes, a Couinaud legend and a caption (PIL)."""
    from PIL import Image, ImageDraw, ImageFont

    from LiverLocalizationLib import labels

    def font(size):
        for candidate in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
            try:
                return ImageFont.truetype(candidate, size)
            except OSError:
                continue
        return ImageFont.load_default(size=size)

    title_font, note_font, small = font(15), font(14), font(13)
    w, h = VIEW_SIZE
    pad, title_h, note_h = 6, 22, 22
    legend_h, caption_h = 34, 40
    n_cols = max(len(r) for r in rows)
    width = n_cols * (w + pad) + pad
    height = len(rows) * (h + title_h + note_h + pad) + legend_h + caption_h + pad
    canvas = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(canvas)
    y = pad
    for row, note in zip(rows, notes):
        for col, (pixels, title) in enumerate(row):
            x = pad + col * (w + pad)
            draw.text((x + 2, y + 3), title, fill=(235, 235, 235), font=title_font)
            canvas.paste(Image.fromarray(pixels), (x, y + title_h))
        draw.text((pad + 2, y + title_h + h + 3), note, fill=(200, 200, 160), font=note_font)
        y += h + title_h + note_h + pad
    x = pad + 2
    draw.text((x, y + 8), "Couinaud:", fill=(235, 235, 235), font=small)
    x += 80
    for value, style in labels.COUINAUD_STYLES.items():
        color = tuple(int(255 * c) for c in style.color)
        draw.rectangle([x, y + 8, x + 16, y + 24], fill=color)
        draw.text((x + 20, y + 8), labels.COUINAUD_ROMAN[value], fill=(235, 235, 235), font=small)
        x += 62
    for style, text in ((labels.NEOPLASM_STYLE, "lesion (neoplasm)"), (labels.LESION_STYLE, "lesion (unclassified)"),
                        (labels.CYST_STYLE, "cyst"), (labels.VESSELS, "vessels")):
        color = tuple(int(255 * c) for c in style.color)
        draw.rectangle([x, y + 8, x + 16, y + 24], fill=color)
        draw.text((x + 20, y + 8), text, fill=(235, 235, 235), font=small)
        x += 28 + int(draw.textlength(text, font=small))
    y += legend_h
    draw.text((pad + 2, y + 4), caption, fill=(170, 170, 170), font=small)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Screenshots" / "results_slice_views.png")
    parser.add_argument("--seed", type=int, default=12, help="phantom seed (12: six lesions of three kinds)")
    parser.add_argument("--phantom-size", default="small", choices=("small", "full"))
    parser.add_argument("--classify", action="store_true", help="also run the lesion classifier (needs torch and weights)")
    args = parser.parse_args(argv)

    from LiverLocalizationLib import geometry, io, metrics
    from LiverLocalizationLib.phantom import generate_phantom

    rows, notes = [], []
    if (REAL_CROP / "ct.nii.gz").exists():
        ct = io.read_image(REAL_CROP / "ct.nii.gz")
        landmarks = io.read_markups(REAL_CROP / "landmarks.mrk.json")
        scene, app, outputs, volume = run_case(ct, landmarks, "3D-IRCADb 1.1", args.classify)
        result = outputs["result"]
        import SimpleITK as sitk

        truth = sitk.GetArrayFromImage(io.read_image(REAL_CROP / "couinaud_labels.nii.gz"))
        mean_dice = np.mean([metrics.dice(sitk.GetArrayViewFromImage(result.couinaud) == v, truth == v) for v in range(1, 9)])
        liver_dice = metrics.dice(sitk.GetArrayViewFromImage(result.liver_mask), truth > 0)
        center = geometry.lps_to_ras(landmarks["RPV"])
        rows.append(case_panels(scene, app, outputs, volume, center, "3D-IRCADb 1.1 (real CT)"))
        notes.append(f"Real CT, landmarks from the data set; liver found automatically (Dice {liver_dice:.2f} vs reference), "
                     f"Couinaud mean Dice {mean_dice:.2f} vs the GLC-UNet annotation; {len(result.lesions)} lesion candidate(s).")
        scene.Clear(True)
    else:
        print(f"{REAL_CROP} absent: rendering the phantom only")
    phantom = generate_phantom(seed=args.seed, size=args.phantom_size)
    scene, app, outputs, volume = run_case(phantom.ct, phantom.landmarks, f"Phantom {args.seed}", args.classify)
    result = outputs["result"]
    # centre the views on the largest true lesion, so that its detection (or miss) is visible
    truth_lesions = sorted(phantom.lesions, key=lambda r: -r.get("volume_ml", 0))
    center = truth_lesions[0]["centroid_ras"] if truth_lesions else geometry.lps_to_ras(phantom.landmarks["RPV"])
    rows.append(case_panels(scene, app, outputs, volume, center, f"Phantom (seed {args.seed})"))
    found = ", ".join(str(r.get("main_segment", "?")) for r in result.lesions) or "none"
    truth_text = ", ".join(f"{r.get('kind', '?')} {r.get('main_segment', '?')}" for r in phantom.lesions)
    notes.append(f"Synthetic CT, views through the largest true lesion. Lesions found in {found}; truth: {truth_text}.")
    caption = ("LiverLocalization results rendered offscreen by Slicer's own slice logic and Segmentations displayable manager "
               "(slicer-core, VTK EGL) — computed output, not a mock-up.")
    out = compose(rows, notes, caption, args.out)
    print(out)
    return out


if __name__ == "__main__":
    main()
