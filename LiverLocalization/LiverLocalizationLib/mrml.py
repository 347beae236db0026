"""The one bridge between LiverLocalizationLib and Slicer's MRML scene (imports ``slicer`` and ``vtk``, never ``qt``).

Conversions keep geometry exact: a volume node's IJK-to-RAS matrix (oblique included, and a linear
parent transform applied) becomes a SimpleITK image in LPS millimetres and back; markups control
points (RAS, world) become landmarks (label → LPS mm); segments are exported on the input volume's
grid. Results go to output nodes the module owns: the segmentation node is updated in place on
reruns, but only segments the module made (tagged ``LiverLocalization.Generated``) and that nobody
edited since (checked against a checksum stored in a tag); user segments and user edits are never
overwritten or deleted.

Works inside Slicer and headless with the ``slicer-core`` wheel (see `create_headless_scene`).
Every function uses ``slicer.mrmlScene`` unless a scene is given.
"""

from __future__ import annotations

import dataclasses

import json
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from . import labels, segfile
from .errors import InputError

GENERATED_TAG = segfile.GENERATED_TAG
CHECKSUM_TAG = segfile.CHECKSUM_TAG
RESULT_ID_TAG = segfile.RESULT_ID_TAG
MODULE_ATTRIBUTE = "LiverLocalization.Output"  # node attribute naming the role of a module output node
_LPS_TO_RAS_4 = np.diag([-1.0, -1.0, 1.0, 1.0])


# ------------------------------------------------------------------------ headless scene

_HEADLESS_LOGICS = (
    ("subjecthierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ("terminologies", "vtkSlicerTerminologiesModuleLogic"),
    ("segmentations", "vtkSlicerSegmentationsModuleLogic"),
    ("volumes", "vtkSlicerVolumesLogic"),
    ("markups", "vtkSlicerMarkupsLogic"),
    ("tables", "vtkSlicerTablesLogic"),
)


def create_headless_scene(home_directory: str | None = None):
    """Build a scene the way Slicer's application does, without Qt (for tests and scripts using slicer-core).

    Creates a vtkMRMLScene, a vtkSlicerApplicationLogic with its colour logic (default colour nodes), the
    segmentation converter rules, and the module logics of Subject hierarchy, Terminologies,
    Segmentations, Volumes, Markups and Tables (each given the scene and the application logic and
    registered with SetModuleLogic). Sets ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()``.
    Returns (scene, application_logic). Inside the Slicer application it returns the running scene.
    """
    if getattr(slicer, "app", None) is not None:
        return slicer.mrmlScene, slicer.app.applicationLogic()
    import tempfile

    warnings_shown = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()  # missing share files (colour files, terminology JSON) are expected here
    try:
        scene = slicer.vtkMRMLScene()
        app = slicer.vtkSlicerApplicationLogic()
        app.SetHomeDirectory(home_directory or tempfile.gettempdir())
        app.SetMRMLScene(scene)
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule, slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
            if not any(isinstance(r, rule) for r in factory.GetConverterRules()):
                factory.RegisterConverterRule(rule())
        color_logic = slicer.vtkSlicerColorLogic()
        color_logic.SetMRMLApplicationLogic(app)
        color_logic.SetMRMLScene(scene)
        app.SetColorLogic(color_logic)
        modules = types.SimpleNamespace(colors=types.SimpleNamespace(logic=lambda: color_logic))
        for name, class_name in _HEADLESS_LOGICS:
            logic = getattr(slicer, class_name)()
            logic.SetMRMLApplicationLogic(app)
            logic.SetMRMLScene(scene)
            app.SetModuleLogic(name, logic)
            setattr(modules, name, types.SimpleNamespace(logic=(lambda logic=logic: logic), name=name))
        # the volumes logic looks up the colours logic by name to give new volumes a colour table
        app.SetModuleLogic("Colors", color_logic)
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(warnings_shown)
    slicer.mrmlScene = scene
    slicer.modules = modules
    slicer.app = None
    return scene, app


def _scene(scene=None):
    scene = scene or slicer.mrmlScene
    if scene is None:
        raise RuntimeError("No MRML scene: run inside Slicer or call create_headless_scene() first.")
    return scene


# ------------------------------------------------------------------------ volumes

def _matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _to_world(node) -> np.ndarray:
    """4×4 matrix from the node's local coordinates to world RAS; InputError for a non-linear parent transform."""
    transform = node.GetParentTransformNode()
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise InputError(f"'{node.GetName()}' is under a non-linear transform; harden the transform first "
                         "(Data module: right-click → Harden transform).")
    matrix = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(matrix)
    return _matrix_to_numpy(matrix)


def volume_ijk_to_ras(node) -> np.ndarray:
    """The volume's 4×4 IJK-to-RAS matrix in world coordinates (parent linear transform applied)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return _to_world(node) @ _matrix_to_numpy(matrix)


def image_geometry_from_node(node) -> sitk.Image:
    """A uint8 image of zeros with the volume node's grid (size, LPS origin, spacing, direction)."""
    image_data = node.GetImageData() if node is not None else None
    if image_data is None:
        raise InputError("The volume has no voxels; load or select a CT volume.")
    return segfile.image_geometry_from_ijk_to_ras(volume_ijk_to_ras(node), image_data.GetDimensions())


def volume_node_to_image(node) -> sitk.Image:
    """A volume node as a SimpleITK image (LPS mm; voxel type kept; values copied).

    The geometry is the node's IJK-to-RAS matrix (world, oblique directions kept) converted to LPS.
    Raises InputError for a missing node, an empty volume or a multi-component (colour) volume.
    """
    if node is None or not node.IsA("vtkMRMLVolumeNode"):
        raise InputError("No input volume: select a CT volume.")
    image_data = node.GetImageData()
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise InputError(f"'{node.GetName()}' has no voxels; load the CT again.")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise InputError(f"'{node.GetName()}' has {image_data.GetNumberOfScalarComponents()} components per voxel; "
                         "a scalar CT volume is needed.")
    nx, ny, nz = image_data.GetDimensions()
    array = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars()).reshape(nz, ny, nx).copy()
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(image_geometry_from_node(node))
    return image


def image_to_volume_node(image: sitk.Image, name: str, node=None, scene=None, node_class: str = "vtkMRMLScalarVolumeNode"):
    """Put a SimpleITK image (LPS geometry) into a new or given volume node (RAS); returns the node.

    The voxel type is kept; the node's IJK-to-RAS matrix encodes spacing, origin and direction exactly.
    A given node is updated in place (its display settings kept) and renamed only when it is new.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("Only 3-D scalar images can be shown as volumes.")
    scene = _scene(scene)
    if node is None:
        node = scene.AddNewNodeByClass(node_class, name)
    array = np.ascontiguousarray(sitk.GetArrayViewFromImage(image))
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(image.GetSize())
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    image_data.GetPointData().SetScalars(scalars)
    node.SetIJKToRASMatrix(_numpy_to_matrix(segfile.ijk_to_ras_matrix(image)))
    node.SetAndObserveImageData(image_data)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


# ------------------------------------------------------------------------ markups

def _canonical_label(label: str) -> str:
    lookup = {name.lower(): name for name in labels.LANDMARK_NAMES}
    return lookup.get(label.strip().lower(), label.strip())


def markups_to_landmarks(markups_node) -> dict[str, np.ndarray]:
    """Defined control points of a markups node as landmarks: label → LPS mm (world coordinates).

    Labels are matched to the project's landmark names ignoring case (``ivc`` → ``IVC``); points
    not yet placed are skipped; a label used twice raises InputError naming it.
    """
    if markups_node is None:
        return {}
    landmarks: dict[str, np.ndarray] = {}
    defined = slicer.vtkMRMLMarkupsNode.PositionDefined
    for i in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(i) != defined:
            continue
        label = _canonical_label(markups_node.GetNthControlPointLabel(i))
        if label in landmarks:
            raise InputError(f"Landmark '{label}' is placed twice in '{markups_node.GetName()}'; delete one of them.")
        ras = np.zeros(3)
        markups_node.GetNthControlPointPositionWorld(i, ras)
        landmarks[label] = ras * np.array([-1.0, -1.0, 1.0])
    return landmarks


def markups_to_points(markups_node) -> dict[str, np.ndarray]:
    """Defined control points of a markups node, any labels (lesion clicks): name → LPS mm (world coordinates).

    A point is named by its label, or 'point N'; ' (N)' is added where a name repeats, so none is lost."""
    points: dict[str, np.ndarray] = {}
    if markups_node is None:
        return points
    defined = slicer.vtkMRMLMarkupsNode.PositionDefined
    for i in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(i) != defined:
            continue
        name = markups_node.GetNthControlPointLabel(i).strip() or f"point {i + 1}"
        if name in points:
            name = f"{name} ({i + 1})"
        ras = np.zeros(3)
        markups_node.GetNthControlPointPositionWorld(i, ras)
        points[name] = ras * np.array([-1.0, -1.0, 1.0])
    return points


def landmarks_to_markups(landmarks: dict[str, np.ndarray], name: str = "Liver landmarks", node=None, scene=None):
    """Landmarks (label → LPS mm) as control points of a new or given point-list node (RAS); returns the node.

    Points of a given node with the same labels are moved; other points are kept.
    """
    scene = _scene(scene)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        node.CreateDefaultDisplayNodes()
    descriptions = getattr(labels, "LANDMARK_DESCRIPTIONS", {})
    existing = {_canonical_label(node.GetNthControlPointLabel(i)): i for i in range(node.GetNumberOfControlPoints())}
    for label, lps in landmarks.items():
        ras = [float(v) for v in np.asarray(lps, dtype=float) * np.array([-1.0, -1.0, 1.0])]
        if label in existing:
            node.SetNthControlPointPositionWorld(existing[label], *ras)
        else:
            index = node.AddControlPointWorld(vtk.vtkVector3d(*ras), label)
            if label in descriptions:
                node.SetNthControlPointDescription(index, descriptions[label])
    return node


def proposed_to_markups(proposed, name: str = "Proposed liver landmarks", node=None, scene=None):
    """Proposed landmarks (`landmarks.ProposedLandmarks`, LPS mm) as control points of a point-list node (RAS,
    world; the LPS/RAS flip is `landmarks_to_markups`'s); returns the node.

    Each point is labelled with its landmark name, its description holds 'proposed, confidence C: reason', and it
    is left unlocked (movable). `node`: a point list to fill, which must be empty (a user's points are never
    overwritten: InputError otherwise); None: a new node named `name`. The missing landmarks get no point.
    """
    if node is not None and node.GetNumberOfControlPoints() > 0:
        raise InputError(f"'{node.GetName()}' already holds points; proposed landmarks go to an empty or new point list.")
    node = landmarks_to_markups(proposed.ordered_points(), name, node=node, scene=scene)
    descriptions = proposed.descriptions()
    node.SetLocked(False)
    for i in range(node.GetNumberOfControlPoints()):
        label = _canonical_label(node.GetNthControlPointLabel(i))
        if label in descriptions:
            node.SetNthControlPointDescription(i, descriptions[label])
        node.SetNthControlPointLocked(i, False)
    return node


def _require_ct_and_liver_segment(volume_node, liver_segmentation_node, liver_segment_id: str | None,
                                  purpose: str) -> None:
    """InputError (naming `purpose`) when no CT volume is selected, or a liver segmentation without its segment."""
    if volume_node is None:
        raise InputError(f"Select the CT volume to {purpose}.")
    if liver_segmentation_node is not None and not liver_segment_id:
        raise InputError("A liver segmentation was selected without choosing its liver segment.")


def _liver_mask(liver_segmentation_node, liver_segment_id: str | None, volume_node):
    """The chosen liver segment as a mask on the CT volume's grid; None without a segmentation."""
    if liver_segmentation_node is None:
        return None
    return segment_to_image(liver_segmentation_node, liver_segment_id, volume_node)


def propose_landmarks_on_nodes(volume_node, liver_segmentation_node=None, liver_segment_id: str | None = None,
                               markups_node=None, progress: Callable[[float, str], None] | None = None):
    """Propose the vessel landmarks from a CT volume node (`landmarks.propose_landmarks`), with the liver segment
    as mask when a segmentation is given, into a point list (`proposed_to_markups`: `markups_node` when it is
    empty, else a new node named after the volume, placed beside it). The input nodes are not modified.

    Returns (markups node, ProposedLandmarks); its ``missing`` maps each landmark not found to the reason.
    Raises InputError when no volume is selected or a liver segmentation has no segment chosen.
    """
    from .landmarks import propose_landmarks

    _require_ct_and_liver_segment(volume_node, liver_segmentation_node, liver_segment_id, "propose landmarks on")
    ct = volume_node_to_image(volume_node)
    proposed = propose_landmarks(ct, _liver_mask(liver_segmentation_node, liver_segment_id, volume_node),
                                 progress=progress)
    if markups_node is not None and markups_node.GetNumberOfControlPoints() > 0:
        markups_node = None  # the user's points stay as they are: a new list
    node = proposed_to_markups(proposed, f"{volume_node.GetName()} proposed landmarks", node=markups_node,
                               scene=volume_node.GetScene())
    if markups_node is None:
        place_next_to(node, volume_node)
    return node, proposed


def landmark_status(markups_node) -> dict[str, bool]:
    """Landmark name → placed (a defined control point with that label, case ignored) for every project landmark."""
    placed: set[str] = set()
    if markups_node is not None:
        defined = slicer.vtkMRMLMarkupsNode.PositionDefined
        for i in range(markups_node.GetNumberOfControlPoints()):
            if markups_node.GetNthControlPointPositionStatus(i) == defined:
                placed.add(_canonical_label(markups_node.GetNthControlPointLabel(i)))
    return {name: name in placed for name in labels.LANDMARK_NAMES}


def start_landmark_placement(markups_node, name: str, scene=None) -> int:
    """Put the scene in place mode so that the next click sets the control point labelled `name`.

    The point is created (with its description) when the list lacks it; an existing one is unset so that the
    click re-places it. Returns the control point index. Uses the scene's selection and interaction nodes.
    """
    if name not in labels.LANDMARK_NAMES:
        raise InputError(f"Unknown landmark {name!r}; use one of {', '.join(labels.LANDMARK_NAMES)}.")
    index = next((i for i in range(markups_node.GetNumberOfControlPoints())
                  if _canonical_label(markups_node.GetNthControlPointLabel(i)) == name), -1)
    if index < 0:
        index = markups_node.AddControlPoint(vtk.vtkVector3d(0.0, 0.0, 0.0), name)
        markups_node.SetNthControlPointDescription(index, getattr(labels, "LANDMARK_DESCRIPTIONS", {}).get(name, ""))
    return _place_point(markups_node, index, scene)


def start_point_placement(markups_node, name: str, scene=None) -> int:
    """Put the scene in place mode so that the next click sets a new control point labelled `name` (a click inside
    a lesion); the list's other points are kept. Returns the new point's index."""
    index = markups_node.AddControlPoint(vtk.vtkVector3d(0.0, 0.0, 0.0), name)
    markups_node.SetNthControlPointDescription(index, "inside a lesion the detection missed")
    return _place_point(markups_node, index, scene)


def _place_point(markups_node, index: int, scene=None) -> int:
    """Unset control point `index` and put the scene in place mode so that the next click sets it."""
    scene = _scene(scene)
    markups_node.UnsetNthControlPointPosition(index)
    markups_node.SetControlPointPlacementStartIndex(index)
    selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    selection.SetReferenceActivePlaceNodeClassName(markups_node.GetClassName())
    selection.SetActivePlaceNodeID(markups_node.GetID())
    interaction = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    interaction.SetPlaceModePersistence(0)
    interaction.SetCurrentInteractionMode(interaction.Place)
    return index


# ------------------------------------------------------------------------ segmentations

def segment_to_array(segmentation_node, segment_id: str, reference_volume_node) -> np.ndarray:
    """A segment as a boolean [z, y, x] array on the reference volume's grid (resampled by Slicer, nearest
    neighbour, when the segmentation has another geometry; parent transforms applied). No scene nodes are made."""
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise InputError(f"'{segmentation_node.GetName()}' has no segment with ID '{segment_id}'.")
    labelmap = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentation_node, segment_id, labelmap, True):
        raise RuntimeError(f"Slicer could not give the voxels of segment '{segment_id}'.")
    dims = reference_volume_node.GetImageData().GetDimensions()
    out = np.zeros(tuple(reversed(dims)), dtype=bool)
    extent = labelmap.GetExtent()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5] or labelmap.GetPointData().GetScalars() is None:
        return out  # empty segment
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)
    reference.SetImageToWorldMatrix(_numpy_to_matrix(volume_ijk_to_ras(reference_volume_node)))
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, reference, resampled, False, True):
        raise RuntimeError(f"Slicer could not resample segment '{segment_id}' onto '{reference_volume_node.GetName()}'.")
    x0, x1, y0, y1, z0, z1 = resampled.GetExtent()
    if x0 > x1 or resampled.GetPointData().GetScalars() is None:
        return out
    values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1)
    # clip to the reference grid (padding may have extended it)
    lo = [max(0, v) for v in (z0, y0, x0)]
    hi = [min(n - 1, v) for n, v in zip(out.shape, (z1, y1, x1))]
    if any(a > b for a, b in zip(lo, hi)):
        return out
    src = values[lo[0] - z0:hi[0] - z0 + 1, lo[1] - y0:hi[1] - y0 + 1, lo[2] - x0:hi[2] - x0 + 1]
    # the labelmap may be a layer shared with other segments: this segment is its label value
    label_value = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    out[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = src == label_value
    return out


def segment_to_image(segmentation_node, segment_id: str, reference_volume_node) -> sitk.Image:
    """A segment as a uint8 0/1 SimpleITK image with exactly the reference volume's grid (LPS)."""
    if segmentation_node is None:
        raise InputError("No segmentation selected for the liver mask.")
    image = sitk.GetImageFromArray(segment_to_array(segmentation_node, segment_id, reference_volume_node).astype(np.uint8))
    image.CopyInformation(image_geometry_from_node(reference_volume_node))
    return image


def _oriented_labelmap(mask: np.ndarray, ijk_to_ras: np.ndarray):
    """A vtkOrientedImageData holding the mask cropped to its bounding box (extent in reference IJK)."""
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(_numpy_to_matrix(ijk_to_ras))
    if mask.any():
        nz = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        (z0, z1), (y0, y1), (x0, x1) = [(int(v[0]), int(v[-1])) for v in nz]
        cropped = np.ascontiguousarray(mask[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1], dtype=np.uint8)
    else:
        z0 = z1 = y0 = y1 = x0 = x1 = 0
        cropped = np.zeros((1, 1, 1), dtype=np.uint8)
    image.SetExtent(x0, x1, y0, y1, z0, z1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(cropped.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    return image


def _unique_segment_id(segmentation, wanted: str) -> str:
    candidate, n = wanted, 2
    while segmentation.GetSegment(candidate) is not None:
        candidate, n = f"{wanted}_{n}", n + 1
    return candidate


def _set_segment(segmentation_node, segment_id: str, spec: segfile.SegmentSpec, mask: np.ndarray, ijk_to_ras: np.ndarray) -> None:
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(segment_id) is None:
        segmentation.AddEmptySegment(segment_id, spec.name, list(spec.style.color))
    ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        _oriented_labelmap(mask, ijk_to_ras), segmentation_node, segment_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    if not ok:
        raise RuntimeError(f"Slicer could not set the voxels of segment '{segment_id}'.")
    segment = segmentation.GetSegment(segment_id)
    segment.SetName(spec.name)
    segment.SetColor(*[float(c) for c in spec.style.color])
    segment.SetNameAutoGenerated(False)
    segment.SetColorAutoGenerated(False)
    for key, value in segfile.segment_tags(spec, segfile.mask_checksum(mask)).items():
        segment.SetTag(key, value)


def _mark_user_owned(segment) -> None:
    """An edited generated segment becomes the user's: no longer tagged as generated, name marked."""
    segment.RemoveTag(GENERATED_TAG)
    segment.RemoveTag(CHECKSUM_TAG)
    if not segment.GetName().endswith("(edited)"):
        segment.SetName(segment.GetName() + " (edited)")


def generated_segment_ids(segmentation_node) -> list[str]:
    """IDs of the segments this module wrote (tag LiverLocalization.Generated)."""
    segmentation = segmentation_node.GetSegmentation()
    out = []
    for index in range(segmentation.GetNumberOfSegments()):
        if segmentation.GetNthSegment(index).HasTag(GENERATED_TAG):
            out.append(segmentation.GetNthSegmentID(index))
    return out


def segment_tag(segment, tag: str) -> str | None:
    """A segment's tag value, None when absent."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(tag, value) else None


def write_segments(segmentation_node, reference_volume_node, specs: list[segfile.SegmentSpec],
                   name: str = "Liver localization", scene=None, warnings: list[str] | None = None):
    """Write segments into the module's output segmentation node (new when None); returns the node.

    Geometry: the reference volume's grid (masks are [z, y, x] arrays on it). On a node written before:
    a generated segment that is unchanged since is updated in place (same ID, display settings kept);
    one the user edited is left alone and the new result goes to a new segment ID (a warning says so);
    generated segments absent from `specs` are removed only when unedited; segments the user added are
    never touched. A new segment is listed right after the segment of the spec before it (a rerun with nine
    Couinaud segments lists IVa and IVb between III and V, not after everything). Warnings are appended to `warnings` when a list is given.
    """
    scene = _scene(scene)
    warnings = warnings if warnings is not None else []
    reference = image_geometry_from_node(reference_volume_node)
    shape = tuple(reversed(reference.GetSize()))
    for spec in specs:
        if np.shape(spec.mask) != shape:
            raise InputError(f"Segment '{spec.segment_id}': mask shape {np.shape(spec.mask)} is not the volume's {shape}.")
    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetAttribute(MODULE_ATTRIBUTE, "segmentation")
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    ijk_to_ras = volume_ijk_to_ras(reference_volume_node)
    segmentation = segmentation_node.GetSegmentation()

    def edited(segment_id: str) -> bool:
        segment = segmentation.GetSegment(segment_id)
        stored = segment_tag(segment, CHECKSUM_TAG)
        if stored is None:
            return True
        return segfile.mask_checksum(segment_to_array(segmentation_node, segment_id, reference_volume_node)) != stored

    wanted = {spec.segment_id for spec in specs}
    generated = {}  # result ID -> segment ID of the generated segment holding it
    for segment_id in generated_segment_ids(segmentation_node):
        result_id = segment_tag(segmentation.GetSegment(segment_id), RESULT_ID_TAG) or segment_id
        generated.setdefault(result_id, segment_id)
    with _modify_blocked(segmentation_node):
        for result_id, segment_id in list(generated.items()):
            if result_id in wanted:
                continue
            if edited(segment_id):
                _mark_user_owned(segmentation.GetSegment(segment_id))
                warnings.append(f"Segment '{segmentation.GetSegment(segment_id).GetName()}' from an earlier run was edited; "
                                "it was kept although this run did not produce it.")
            else:
                segmentation.RemoveSegment(segment_id)
        previous = None  # the segment ID of the spec before
        for spec in specs:
            mask = np.asarray(spec.mask, dtype=bool)
            segment_id = generated.get(spec.segment_id)
            if segment_id is not None and edited(segment_id):
                existing = segmentation.GetSegment(segment_id)
                _mark_user_owned(existing)
                segment_id = None
                warnings.append(f"Segment '{spec.name}' was edited since the last run; your edit is kept as "
                                f"'{existing.GetName()}' and the new result is in a new segment.")
            new = segment_id is None
            if new:
                segment_id = _unique_segment_id(segmentation, spec.segment_id)
            _set_segment(segmentation_node, segment_id, spec, mask, ijk_to_ras)
            if new and previous is not None:
                after = segmentation.GetSegmentIndex(previous) + 1
                if segmentation.GetSegmentIndex(segment_id) != after:
                    segmentation.SetSegmentIndex(segment_id, after)
            previous = segment_id
        segmentation.CollapseBinaryLabelmaps(False)
    return segmentation_node


def set_generated_segments_visible(segmentation_node, result_id_prefix: str, visible: bool) -> int:
    """Show or hide the generated segments whose result ID starts with the prefix ('couinaud_', 'lesion_');
    returns how many changed. User segments are left as they are."""
    if segmentation_node is None or segmentation_node.GetDisplayNode() is None:
        return 0
    segmentation = segmentation_node.GetSegmentation()
    display = segmentation_node.GetDisplayNode()
    count = 0
    for segment_id in generated_segment_ids(segmentation_node):
        result_id = segment_tag(segmentation.GetSegment(segment_id), RESULT_ID_TAG) or segment_id
        if result_id.startswith(result_id_prefix):
            display.SetSegmentVisibility(segment_id, visible)
            count += 1
    return count


class _modify_blocked:
    """Context manager: batch the node's Modified events (StartModify/EndModify)."""

    def __init__(self, node):
        self.node = node

    def __enter__(self):
        self.state = self.node.StartModify()
        return self.node

    def __exit__(self, *exc):
        self.node.EndModify(self.state)
        return False


# ------------------------------------------------------------------------ tables

def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple, np.ndarray)):
        return json.dumps(_plain(value), separators=(",", ":"))
    return str(value)


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return round(value, 4) if np.isfinite(value) else None
    return value


def _column_kind(values: list) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (bool, np.bool_)) for v in present):
        return "string"
    if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present):
        return "int"
    if present and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                       for v in present):
        return "double"
    return "string"


def write_table(rows: list[dict], name: str = "Liver lesions", node=None, scene=None, columns: list[str] | None = None,
                units: dict[str, str] | None = None):
    """Rows (dicts) into a new or given table node, one column per key; returns the node.

    Numbers become numeric columns (NaN for missing values), other values text (lists and dicts as
    compact JSON). Units: from `units` or from the key's suffix (_ml, _mm, _hu, _ras → mm).
    """
    scene = _scene(scene)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        node.SetAttribute(MODULE_ATTRIBUTE, "table")
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    suffix_units = {"_ml": "ml", "_mm": "mm", "_hu": "HU", "_mm3": "mm3", "_ras": "mm"}
    table = vtk.vtkTable()
    for column in columns:
        values = [row.get(column) for row in rows]
        kind = _column_kind(values)
        if kind == "int" and any(v is None for v in values):
            kind = "double"
        array = {"int": vtk.vtkIntArray, "double": vtk.vtkDoubleArray, "string": vtk.vtkStringArray}[kind]()
        array.SetName(column)
        for value in values:
            if kind == "string":
                array.InsertNextValue(_cell_text(value))
            elif kind == "int":
                array.InsertNextValue(int(value))
            else:
                array.InsertNextValue(float("nan") if value is None else float(value))
        table.AddColumn(array)
    with _modify_blocked(node):
        node.SetAndObserveTable(table)
        for column in columns:
            unit = (units or {}).get(column) or next((u for s, u in suffix_units.items() if column.endswith(s)), "")
            if unit:
                node.SetColumnUnitLabel(column, unit)
        node.SetLocked(False)
    return node


def table_row_centroid_ras(table_node, row: int) -> np.ndarray | None:
    """The 'centroid_ras' cell (RAS mm, as write_table stores it: JSON list) of a lesion table row; None when absent."""
    column = table_node.GetTable().GetColumnByName("centroid_ras") if table_node is not None else None
    if column is None or not 0 <= row < table_node.GetNumberOfRows():
        return None
    try:
        value = np.asarray(json.loads(column.GetValue(row)), dtype=float)
    except (TypeError, ValueError):
        return None
    return value if value.shape == (3,) and np.isfinite(value).all() else None


def jump_slices_to(ras, scene=None) -> None:
    """Centre every slice view on a point (RAS mm) with the Markups logic, as clicking a point in Slicer does."""
    _scene(scene)
    logic = slicer.modules.markups.logic()
    logic.JumpSlicesToLocation(*[float(v) for v in ras], True)


# ------------------------------------------------------------------------ subject hierarchy

def place_next_to(node, input_node) -> None:
    """Put an output node in the subject hierarchy under the input node's parent (its study), when it has one."""
    if node is None or input_node is None:
        return
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    if sh is None:
        return
    input_item = sh.GetItemByDataNode(input_node)
    parent = sh.GetItemParent(input_item) if input_item else sh.GetSceneItemID()
    item = sh.GetItemByDataNode(node)
    if not item:  # Slicer's application adds items for new nodes; a bare scene does not
        sh.CreateItem(parent or sh.GetSceneItemID(), node)
    elif parent and sh.GetItemParent(item) != parent:
        sh.SetItemParent(item, parent)


# ------------------------------------------------------------------------ running on nodes

LESION_TABLE_COLUMNS = (
    "id", "source", "volume_ml", "max_diameter_mm", "axial_diameter_mm", "mean_hu", "contrast_hu", "centroid_ras",
    "main_segment", "segments", "segment_fractions",
    "distance_hepatic_vein_landmark_mm", "nearest_hepatic_vein_landmark", "distance_portal_vein_landmark_mm",
    "nearest_portal_vein_landmark", "kind", "malignant_probability",
)


def lesion_table_rows(lesions: list[dict]) -> list[dict]:
    """Per-lesion rows for the table: the report columns first, then any others the pipeline added."""
    extra = []
    for row in lesions:
        extra += [k for k in row if k not in LESION_TABLE_COLUMNS and k not in extra]
    return [{k: row.get(k) for k in list(LESION_TABLE_COLUMNS) + extra} for row in lesions]


@dataclass
class NodeOutputs:
    """What run_on_nodes produced: the output nodes, the pipeline result (images in LPS) and the warnings.

    Fields read as attributes (``outputs.table``) or as keys (``outputs["table"]``).
    """

    segmentation: object
    table: object
    denoised: object
    gradcam: object | None
    result: object
    warnings: list[str] = field(default_factory=list)

    def __getitem__(self, key: str):
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def nodes(self) -> dict:
        """Role → output node (None for outputs not computed), the form run_on_nodes takes as `outputs`."""
        return {"segmentation": self.segmentation, "table": self.table, "denoised": self.denoised, "gradcam": self.gradcam}


@dataclass
class RunInputs:
    """What a run reads from the scene, as images and points (LPS mm): `read_run_inputs`."""

    ct: sitk.Image
    landmarks: dict | None
    liver_mask: sitk.Image | None
    options: object  # pipeline.PipelineOptions, with the lesion points


def read_run_inputs(volume_node, markups_node=None, liver_segmentation_node=None, liver_segment_id: str | None = None,
                    options=None, outputs: dict | None = None, lesion_points_node=None) -> RunInputs:
    """Check the nodes of a run and read them (see `run_on_nodes` for the arguments); nothing in the scene changes.

    Raises InputError when no volume is selected, a liver segmentation has no segment chosen, or an output node is
    one of the inputs."""
    from . import pipeline

    _require_ct_and_liver_segment(volume_node, liver_segmentation_node, liver_segment_id, "analyse")
    inputs = {id(n) for n in (volume_node, markups_node, liver_segmentation_node, lesion_points_node) if n is not None}
    for role, node in (outputs or {}).items():
        if node is not None and id(node) in inputs:
            raise InputError(f"The {role} output is one of the input nodes ('{node.GetName()}'); inputs are never "
                             "overwritten: choose another output node or create a new one.")
    ct = volume_node_to_image(volume_node)
    landmarks = markups_to_landmarks(markups_node) if markups_node is not None else None
    liver_mask = _liver_mask(liver_segmentation_node, liver_segment_id, volume_node)
    options = options or pipeline.PipelineOptions()
    points = markups_to_points(lesion_points_node)
    if points:
        options = dataclasses.replace(options, lesion_points=points)
    return RunInputs(ct, landmarks or None, liver_mask, options)


def write_run_outputs(result, volume_node, outputs: dict | None = None) -> NodeOutputs:
    """Put a pipeline result into output nodes beside `volume_node` (the run's input CT): the segmentation, the
    lesion table, the denoised volume and the Grad-CAM map; `outputs` names existing nodes to update (keys
    'segmentation', 'table', 'denoised', 'gradcam'; missing or None: created). Raises InputError when the input
    volume has left the scene (deleted while a background run worked)."""
    from . import pipeline

    scene = volume_node.GetScene() if volume_node is not None else None
    if scene is None or scene.GetNodeByID(volume_node.GetID()) is None:
        raise InputError("The input volume was removed from the scene during the run; its results were not written. "
                         "Load it again and apply.")
    outputs = dict(outputs or {})
    warnings = list(result.warnings)
    base = volume_node.GetName()
    segmentation = write_segments(outputs.get("segmentation"), volume_node, pipeline.result_segments(result),
                                  name=f"{base} liver localization", scene=scene, warnings=warnings)
    table = write_table(lesion_table_rows(result.lesions), name=f"{base} lesions", node=outputs.get("table"), scene=scene)
    denoised = image_to_volume_node(result.denoised, f"{base} denoised", node=outputs.get("denoised"), scene=scene)
    _copy_window_level(volume_node, denoised)
    gradcam = None
    if result.gradcam is not None:
        gradcam = image_to_volume_node(result.gradcam, f"{base} Grad-CAM", node=outputs.get("gradcam"), scene=scene)
        _set_heat_colormap(gradcam)
    for node, role in ((segmentation, "segmentation"), (table, "table"), (denoised, "denoised"), (gradcam, "gradcam")):
        if node is not None:
            node.SetAttribute(MODULE_ATTRIBUTE, role)
            place_next_to(node, volume_node)
    return NodeOutputs(segmentation, table, denoised, gradcam, result, warnings)


def run_on_nodes(volume_node, markups_node=None, liver_segmentation_node=None, liver_segment_id: str | None = None,
                 options=None, outputs: dict | None = None, progress: Callable[[float, str], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None, lesion_points_node=None) -> NodeOutputs:
    """Run the pipeline on scene nodes in this process and put the results into output nodes; input nodes are
    never modified (`read_run_inputs`, `pipeline.run_pipeline`, `write_run_outputs`; the Slicer module runs the
    middle step in a worker process instead, `background`).

    volume_node: the CT (HU). markups_node: point list with the landmarks (labels IVC, IVC_inferior, RHV,
    MHV, LHV, RPV, LPV, UP; RAS world); None runs without Couinaud segments. liver_segmentation_node and
    liver_segment_id: an optional liver mask replacing liver extraction. lesion_points_node: an optional point
    list of clicks inside lesions the detection may miss (any labels; each gives its lesion, and a click inside a
    detected lesion keeps it). options: pipeline.PipelineOptions.
    outputs: existing output nodes to update, keys 'segmentation', 'table', 'denoised', 'gradcam' (missing
    or None: created). Returns NodeOutputs: segmentation, table, denoised, gradcam (None when not computed),
    result (pipeline.PipelineResult) and warnings (list of str).
    """
    from . import pipeline

    inputs = read_run_inputs(volume_node, markups_node, liver_segmentation_node, liver_segment_id, options, outputs,
                             lesion_points_node)
    scaled = None if progress is None else (lambda fraction, message: progress(0.95 * fraction, message))
    result = pipeline.run_pipeline(inputs.ct, inputs.landmarks, liver_mask=inputs.liver_mask, options=inputs.options,
                                   progress=scaled, should_cancel=should_cancel)
    if progress is not None:
        progress(0.96, "Writing results to the scene")
    written = write_run_outputs(result, volume_node, outputs)
    if progress is not None:
        progress(1.0, "Done")
    return written


def _copy_window_level(source, target) -> None:
    src, dst = source.GetDisplayNode(), target.GetDisplayNode()
    if src is None or dst is None:
        return
    dst.SetAutoWindowLevel(False)
    dst.SetWindowLevel(src.GetWindow(), src.GetLevel())


def _set_heat_colormap(node) -> None:
    display = node.GetDisplayNode()
    if display is None:
        return
    scene = node.GetScene()
    for color_id in ("vtkMRMLColorTableNodeFileColdToHotRainbow.txt", "vtkMRMLColorTableNodeRainbow",
                     "vtkMRMLColorTableNodeFileInferno.txt"):
        if scene.GetNodeByID(color_id) is not None:
            display.SetAndObserveColorNodeID(color_id)
            break
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 1.0)
    # near-zero attention is transparent when the map is shown over the CT
    display.SetApplyThreshold(True)
    display.SetThreshold(0.05, 1.0)
