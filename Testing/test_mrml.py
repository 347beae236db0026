"""The MRML bridge against Slicer's real MRML library (slicer-core), headless."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")

from LiverLocalizationLib import io, labels, mrml, segfile  # noqa: E402
from LiverLocalizationLib.errors import InputError  # noqa: E402


def _oblique_ct(size=(36, 30, 20)) -> sitk.Image:
    rng = np.random.default_rng(0)
    arr = rng.normal(100, 20, size[::-1]).astype(np.int16)
    arr[:, :2, :] = -1000
    ct = sitk.GetImageFromArray(arr)
    ct.SetSpacing((0.75, 0.9, 2.5))
    ct.SetOrigin((120.5, -80.25, 300.0))
    a = 0.35
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    ct.SetDirection(rot.ravel().tolist())
    return ct


def _ball(shape, centre_zyx, radius) -> np.ndarray:
    z, y, x = np.indices(shape)
    return (z - centre_zyx[0]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2 <= radius ** 2


# ------------------------------------------------------------------------ volumes

@pytest.mark.parametrize("pixel", [sitk.sitkInt16, sitk.sitkFloat32, sitk.sitkUInt8])
def test_volume_round_trip_is_exact_including_oblique_geometry(slicer_scene, pixel):
    ct = sitk.Cast(_oblique_ct(), pixel)
    node = mrml.image_to_volume_node(ct, "CT")
    # Slicer's IJK-to-RAS of the node is the LPS geometry with x and y negated
    matrix = mrml.volume_ijk_to_ras(node)
    expected_first_voxel_ras = np.asarray(ct.TransformIndexToPhysicalPoint((0, 0, 0))) * [-1, -1, 1]
    np.testing.assert_allclose(matrix[:3, 3], expected_first_voxel_ras, atol=1e-9)
    corner = (35, 29, 19)
    np.testing.assert_allclose(matrix @ [*corner, 1], [*(np.asarray(ct.TransformIndexToPhysicalPoint(corner)) * [-1, -1, 1]), 1],
                               atol=1e-9)
    back = mrml.volume_node_to_image(node)
    assert back.GetPixelID() == ct.GetPixelID()
    assert back.GetSize() == ct.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), ct.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), ct.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), ct.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(ct))


def test_volume_under_linear_transform_is_read_in_world_coordinates(slicer_scene):
    import vtk

    ct = _oblique_ct()
    node = mrml.image_to_volume_node(ct, "CT")
    transform = slicer_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 10.0)  # 10 mm to the right (RAS x)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    back = mrml.volume_node_to_image(node)
    np.testing.assert_allclose(np.asarray(back.GetOrigin()) - ct.GetOrigin(), [-10.0, 0, 0], atol=1e-9)  # LPS x = -RAS x


def test_bad_volumes_are_refused(slicer_scene):
    with pytest.raises(InputError, match="select a CT"):
        mrml.volume_node_to_image(None)
    empty = slicer_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxels"):
        mrml.volume_node_to_image(empty)


def test_update_existing_volume_node_in_place(slicer_scene):
    ct = _oblique_ct()
    node = mrml.image_to_volume_node(ct, "out")
    smaller = sitk.Cast(ct[::2, ::2, ::2], sitk.sitkFloat32) * 0.5
    same = mrml.image_to_volume_node(smaller, "ignored", node=node)
    assert same is node and node.GetName() == "out"
    np.testing.assert_allclose(sitk.GetArrayFromImage(mrml.volume_node_to_image(node)), sitk.GetArrayFromImage(smaller))


# ------------------------------------------------------------------------ markups

def test_markups_landmarks_round_trip_lps_ras(slicer_scene):
    landmarks = {"IVC": np.array([10.0, 20.0, 30.0]), "RHV": np.array([-40.5, 12.25, 55.0])}
    node = mrml.landmarks_to_markups(landmarks, "landmarks")
    ras = np.zeros(3)
    node.GetNthControlPointPositionWorld(0, ras)
    np.testing.assert_allclose(ras, [-10.0, -20.0, 30.0])
    back = mrml.markups_to_landmarks(node)
    assert set(back) == set(landmarks)
    for k in landmarks:
        np.testing.assert_allclose(back[k], landmarks[k])
    # moving an existing label updates it, a new one is added
    mrml.landmarks_to_markups({"IVC": np.array([1.0, 2.0, 3.0]), "LPV": np.array([0.0, 0.0, 0.0])}, node=node)
    assert node.GetNumberOfControlPoints() == 3
    np.testing.assert_allclose(mrml.markups_to_landmarks(node)["IVC"], [1.0, 2.0, 3.0])


def test_markups_labels_case_unplaced_points_and_duplicates(slicer_scene):
    node = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "pts")
    node.AddControlPoint(1.0, 2.0, 3.0, "ivc")
    index = node.AddControlPoint(0.0, 0.0, 0.0, "RHV")
    node.UnsetNthControlPointPosition(index)
    assert set(mrml.markups_to_landmarks(node)) == {"IVC"}
    node.AddControlPoint(4.0, 5.0, 6.0, "IVC")
    with pytest.raises(InputError, match="'IVC' is placed twice"):
        mrml.markups_to_landmarks(node)


def test_landmark_placement_and_status(slicer_scene):
    node = mrml.landmarks_to_markups({"IVC": np.array([1.0, 2.0, 3.0])}, "landmarks")
    status = mrml.landmark_status(node)
    assert status["IVC"] and not status["RHV"] and set(status) == set(labels.LANDMARK_NAMES)
    index = mrml.start_landmark_placement(node, "RHV")
    assert node.GetNthControlPointLabel(index) == "RHV"
    assert node.GetNthControlPointDescription(index) == labels.LANDMARK_DESCRIPTIONS["RHV"]
    assert node.GetControlPointPlacementStartIndex() == index
    interaction = slicer_scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    selection = slicer_scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert selection.GetActivePlaceNodeID() == node.GetID()
    assert not mrml.landmark_status(node)["RHV"]  # created but not yet placed
    node.SetNthControlPointPositionWorld(index, 5.0, 6.0, 7.0)
    assert mrml.landmark_status(node)["RHV"]
    # re-placing an existing landmark unsets it until the click
    assert mrml.start_landmark_placement(node, "IVC") == 0
    assert not mrml.landmark_status(node)["IVC"]
    assert set(mrml.markups_to_landmarks(node)) == {"RHV"}
    with pytest.raises(InputError, match="Unknown landmark"):
        mrml.start_landmark_placement(node, "aorta")


def test_real_landmarks_file_matches_markups_node(slicer_scene, ircadb_crop_dir):
    """Slicer's own JSON reader and our io.read_markups agree on the real landmarks (LPS file)."""
    landmarks = io.read_markups(ircadb_crop_dir / "landmarks.mrk.json")
    node = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "real")
    storage = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode")
    storage.SetFileName(str(ircadb_crop_dir / "landmarks.mrk.json"))
    assert storage.ReadData(node) == 1
    from_node = mrml.markups_to_landmarks(node)
    assert set(from_node) == set(landmarks) == set(labels.LANDMARK_NAMES)
    for k in landmarks:
        np.testing.assert_allclose(from_node[k], landmarks[k], atol=1e-4)


# ------------------------------------------------------------------------ segmentations

def _specs(shape) -> list[segfile.SegmentSpec]:
    liver = _ball(shape, (10, 15, 18), 9)
    lesion = _ball(shape, (10, 15, 20), 3)
    z, y, x = np.indices(shape)
    return [
        segfile.SegmentSpec("liver", "Liver", liver, labels.LIVER),
        segfile.SegmentSpec("lesion_1", "Lesion 1 – metastasis – VII", lesion, labels.NEOPLASM_STYLE),
        segfile.SegmentSpec("couinaud_VII", "Couinaud VII", liver & (x >= 18), labels.COUINAUD_STYLES[7]),
        segfile.SegmentSpec("couinaud_VI", "Couinaud VI", liver & (x < 18), labels.COUINAUD_STYLES[6]),
    ]


def _ids(node) -> list[str]:
    seg = node.GetSegmentation()
    return [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]


def test_write_segments_voxels_names_colours_terminology(slicer_scene):
    ct = _oblique_ct()
    volume = mrml.image_to_volume_node(ct, "CT")
    specs = _specs(tuple(reversed(ct.GetSize())))
    node = mrml.write_segments(None, volume, specs)
    assert _ids(node) == [s.segment_id for s in specs]
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume
    for spec in specs:
        segment = node.GetSegmentation().GetSegment(spec.segment_id)
        assert segment.GetName() == spec.name
        np.testing.assert_allclose(segment.GetColor(), spec.style.color, atol=1e-6)
        entry = segfile.parse_terminology_entry(mrml.segment_tag(segment, "TerminologyEntry"))
        assert entry["category"] == spec.style.category and entry["type"] == spec.style.type
        np.testing.assert_array_equal(mrml.segment_to_array(node, spec.segment_id, volume), spec.mask)
    mask_image = mrml.segment_to_image(node, "lesion_1", volume)
    assert mask_image.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(mask_image.GetDirection(), ct.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(mask_image.GetOrigin(), ct.GetOrigin(), atol=1e-9)


def test_rerun_updates_own_segments_and_keeps_user_work(slicer_scene):
    import slicer

    ct = _oblique_ct()
    volume = mrml.image_to_volume_node(ct, "CT")
    shape = tuple(reversed(ct.GetSize()))
    specs = _specs(shape)
    node = mrml.write_segments(None, volume, specs)
    # the user adds a segment and edits the lesion
    user_id = node.GetSegmentation().AddEmptySegment("my_tumour", "My tumour", [0.0, 1.0, 0.0])
    user_mask = _ball(shape, (5, 5, 5), 2)
    slicer.util.updateSegmentBinaryLabelmapFromArray(user_mask.astype(np.uint8), node, user_id, volume)
    edited = specs[1].mask.copy()
    edited[10, 15, 25:30] = True
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited.astype(np.uint8), node, "lesion_1", volume)

    # second run: a bigger lesion, liver unchanged, no Couinaud VI any more
    new_lesion = _ball(shape, (10, 15, 20), 4)
    specs2 = [specs[0], segfile.SegmentSpec("lesion_1", specs[1].name, new_lesion, labels.NEOPLASM_STYLE), specs[2]]
    warnings: list[str] = []
    same = mrml.write_segments(node, volume, specs2, warnings=warnings)
    assert same is node
    ids = _ids(node)
    assert "couinaud_VI" not in ids  # stale, unedited: removed
    assert "my_tumour" in ids  # the user's own segment is untouched
    np.testing.assert_array_equal(mrml.segment_to_array(node, "my_tumour", volume), user_mask)
    # the edited lesion is kept as the user's, the new result went to a new segment
    np.testing.assert_array_equal(mrml.segment_to_array(node, "lesion_1", volume), edited)
    assert node.GetSegmentation().GetSegment("lesion_1").GetName().endswith("(edited)")
    assert not node.GetSegmentation().GetSegment("lesion_1").HasTag(segfile.GENERATED_TAG)
    new_ids = [i for i in ids if i.startswith("lesion_1_")]
    assert len(new_ids) == 1
    np.testing.assert_array_equal(mrml.segment_to_array(node, new_ids[0], volume), new_lesion)
    assert any("edited" in w for w in warnings)

    # third run, nothing edited since: updates in place, no new segments, no warnings
    warnings = []
    mrml.write_segments(node, volume, specs2, warnings=warnings)
    assert _ids(node) == ids and warnings == []


def test_show_hide_generated_segments_only(slicer_scene):
    ct = _oblique_ct()
    volume = mrml.image_to_volume_node(ct, "CT")
    node = mrml.write_segments(None, volume, _specs(tuple(reversed(ct.GetSize()))))
    node.GetSegmentation().AddEmptySegment("couinaud_mine", "My Couinaud note", [1.0, 1.0, 1.0])
    assert mrml.set_generated_segments_visible(node, "couinaud_", False) == 2
    display = node.GetDisplayNode()
    assert not display.GetSegmentVisibility("couinaud_VI") and not display.GetSegmentVisibility("couinaud_VII")
    assert display.GetSegmentVisibility("couinaud_mine") and display.GetSegmentVisibility("lesion_1")
    mrml.set_generated_segments_visible(node, "couinaud_", True)
    assert display.GetSegmentVisibility("couinaud_VI")


def test_segment_from_another_grid_is_resampled_onto_the_volume(slicer_scene):
    """A user's liver mask drawn on a coarser grid arrives on the CT grid (nearest neighbour, same physical place)."""
    ct = _oblique_ct()
    volume = mrml.image_to_volume_node(ct, "CT")
    coarse = sitk.Image([s // 2 for s in ct.GetSize()], sitk.sitkUInt8)
    coarse.SetSpacing([2 * s for s in ct.GetSpacing()])
    coarse.SetDirection(ct.GetDirection())
    coarse.SetOrigin(ct.TransformContinuousIndexToPhysicalPoint([0.5, 0.5, 0.5]))  # voxel corners coincide
    coarse_volume = mrml.image_to_volume_node(coarse, "coarse")
    coarse_mask = _ball(tuple(reversed(coarse.GetSize())), (5, 7, 9), 4)
    node = mrml.write_segments(None, coarse_volume, [segfile.SegmentSpec("liver", "Liver", coarse_mask, labels.LIVER)])
    on_ct = mrml.segment_to_array(node, "liver", volume)
    expected = np.repeat(np.repeat(np.repeat(coarse_mask, 2, axis=0), 2, axis=1), 2, axis=2)
    assert on_ct.shape == expected.shape
    np.testing.assert_array_equal(on_ct, expected)


def test_empty_segments_are_written_and_rerun_cleanly(slicer_scene):
    ct = _oblique_ct()
    volume = mrml.image_to_volume_node(ct, "CT")
    shape = tuple(reversed(ct.GetSize()))
    specs = _specs(shape)[:1] + [segfile.SegmentSpec("couinaud_I", "Couinaud I", np.zeros(shape, bool), labels.COUINAUD_STYLES[1])]
    node = mrml.write_segments(None, volume, specs)
    assert not mrml.segment_to_array(node, "couinaud_I", volume).any()
    warnings: list[str] = []
    mrml.write_segments(node, volume, specs, warnings=warnings)
    assert warnings == [] and _ids(node) == ["liver", "couinaud_I"]
    # an empty result replacing a non-empty one empties the segment
    specs[0] = segfile.SegmentSpec("liver", "Liver", np.zeros(shape, bool), labels.LIVER)
    mrml.write_segments(node, volume, specs, warnings=warnings)
    assert warnings == [] and not mrml.segment_to_array(node, "liver", volume).any()


def test_segment_id_taken_by_user_segment_is_not_overwritten(slicer_scene):
    ct = _oblique_ct()
    volume = mrml.image_to_volume_node(ct, "CT")
    specs = _specs(tuple(reversed(ct.GetSize())))
    node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user's")
    node.CreateDefaultDisplayNodes()
    node.GetSegmentation().AddEmptySegment("liver", "User liver", [1.0, 0.0, 0.0])
    mrml.write_segments(node, volume, specs[:1])
    assert node.GetSegmentation().GetSegment("liver").GetName() == "User liver"
    assert not mrml.segment_to_array(node, "liver", volume).any()
    np.testing.assert_array_equal(mrml.segment_to_array(node, "liver_2", volume), specs[0].mask)


def test_saved_segmentation_node_reads_back_with_segfile(tmp_path, slicer_scene):
    ct = _oblique_ct()
    volume = mrml.image_to_volume_node(ct, "CT")
    specs = _specs(tuple(reversed(ct.GetSize())))
    node = mrml.write_segments(None, volume, specs)
    storage = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "node.seg.nrrd"))
    assert storage.WriteData(node) == 1
    grid, segments = segfile.read_seg_nrrd(tmp_path / "node.seg.nrrd")
    np.testing.assert_allclose(grid.GetDirection(), ct.GetDirection(), atol=1e-9)
    np.testing.assert_allclose(grid.GetOrigin(), ct.GetOrigin(), atol=1e-6)
    for seg, spec in zip(segments, specs):
        assert seg["id"] == spec.segment_id and seg["name"] == spec.name
        assert seg["tags"][segfile.CHECKSUM_TAG] == segfile.mask_checksum(spec.mask)
        np.testing.assert_array_equal(seg["mask"], spec.mask)


# ------------------------------------------------------------------------ tables and hierarchy

def test_write_table_types_units_and_update(slicer_scene):
    rows = [
        {"id": 1, "volume_ml": 2.5, "main_segment": "VII", "segments": ["VII", "VIII"], "malignant_probability": None},
        {"id": 2, "volume_ml": 0.75, "main_segment": "II", "segments": ["II"], "malignant_probability": 0.9},
    ]
    node = mrml.write_table(rows, "lesions")
    table = node.GetTable()
    assert table.GetNumberOfRows() == 2 and node.GetNumberOfColumns() == 5
    assert table.GetColumnByName("id").GetDataTypeAsString() == "int"
    assert table.GetColumnByName("volume_ml").GetValue(1) == pytest.approx(0.75)
    assert node.GetColumnUnitLabel("volume_ml") == "ml"
    assert table.GetColumnByName("segments").GetValue(0) == '["VII","VIII"]'
    assert np.isnan(table.GetColumnByName("malignant_probability").GetValue(0))
    same = mrml.write_table(rows[:1], node=node)
    assert same is node and node.GetTable().GetNumberOfRows() == 1


def test_lesion_row_centroid_and_slice_jump(slicer_scene):
    import slicer

    volume = mrml.image_to_volume_node(_oblique_ct(), "CT")
    table = mrml.write_table([{"id": 1, "centroid_ras": [10.5, -20.0, 31.25]}, {"id": 2, "centroid_ras": None}], "lesions")
    np.testing.assert_allclose(mrml.table_row_centroid_ras(table, 0), [10.5, -20.0, 31.25])
    assert mrml.table_row_centroid_ras(table, 1) is None and mrml.table_row_centroid_ras(table, 5) is None
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(slicer.modules.markups.logic().GetMRMLApplicationLogic())
    logic.SetMRMLScene(slicer_scene)
    slice_node = logic.AddSliceNode("Red")
    slice_node.SetOrientation("Axial")
    logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume.GetID())
    mrml.jump_slices_to([10.5, -20.0, 31.25])
    assert slice_node.GetSliceOffset() == pytest.approx(31.25, abs=1e-6)


def test_outputs_are_placed_in_the_input_study(slicer_scene):
    import slicer

    volume = mrml.image_to_volume_node(_oblique_ct(), "CT")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer_scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient")
    study = sh.CreateStudyItem(patient, "Study")
    if sh.GetItemByDataNode(volume):
        sh.SetItemParent(sh.GetItemByDataNode(volume), study)
    else:  # a bare scene has no subject hierarchy plugins adding items for new nodes
        sh.CreateItem(study, volume)
    table = mrml.write_table([{"id": 1}], "t")
    mrml.place_next_to(table, volume)
    assert sh.GetItemParent(sh.GetItemByDataNode(table)) == study


# ------------------------------------------------------------------------ the whole pipeline on scene nodes

def _input_state(volume, markups, segmentation=None):
    """Everything about the input nodes that must not change: voxels, geometry, names, points, segments."""
    state = {
        "voxels": mrml.volume_node_to_image(volume), "ijk_to_ras": mrml.volume_ijk_to_ras(volume), "name": volume.GetName(),
        "points": {k: v.copy() for k, v in mrml.markups_to_landmarks(markups).items()},
        "n_points": markups.GetNumberOfControlPoints(),
    }
    if segmentation is not None:
        seg = segmentation.GetSegmentation()
        state["segments"] = [(seg.GetNthSegmentID(i), seg.GetNthSegment(i).GetName(),
                              segfile.mask_checksum(mrml.segment_to_array(segmentation, seg.GetNthSegmentID(i), volume)))
                             for i in range(seg.GetNumberOfSegments())]
    return state


def _assert_same_state(before, after):
    np.testing.assert_array_equal(sitk.GetArrayFromImage(after.pop("voxels")), sitk.GetArrayFromImage(before.pop("voxels")))
    np.testing.assert_array_equal(after.pop("ijk_to_ras"), before.pop("ijk_to_ras"))
    points_after, points_before = after.pop("points"), before.pop("points")
    assert points_after.keys() == points_before.keys()
    for k in points_before:
        np.testing.assert_array_equal(points_after[k], points_before[k])
    assert after == before


@pytest.fixture(scope="module")
def phantom_case():
    from LiverLocalizationLib.phantom import generate_phantom

    return generate_phantom(seed=7, size="small")


def test_run_on_phantom_nodes_fills_outputs_and_keeps_inputs(tmp_path, slicer_scene, phantom_case):
    import slicer
    from LiverLocalizationLib import metrics
    from LiverLocalizationLib.pipeline import PipelineOptions

    volume = mrml.image_to_volume_node(phantom_case.ct, "Phantom")
    markups = mrml.landmarks_to_markups(phantom_case.landmarks, "Phantom landmarks")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer_scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Study")
    sh.CreateItem(study, volume)
    before = _input_state(volume, markups)
    reported = []
    out = mrml.run_on_nodes(volume, markups, options=PipelineOptions(classify=False),
                            progress=lambda f, m: reported.append(f))
    _assert_same_state(before, _input_state(volume, markups))
    assert reported[-1] == 1.0 and all(b >= a - 1e-9 for a, b in zip(reported, reported[1:]))

    result = out["result"]
    seg = out["segmentation"]
    truth = sitk.GetArrayViewFromImage(phantom_case.truth_couinaud)
    liver_dice = metrics.dice(mrml.segment_to_array(seg, "liver", volume), truth > 0)
    couinaud_dice = [metrics.dice(mrml.segment_to_array(seg, f"couinaud_{r}", volume), truth == v)
                     for v, r in labels.COUINAUD_ROMAN.items()]
    assert liver_dice > 0.9, liver_dice  # measured 0.961
    assert np.mean(couinaud_dice) > 0.7, couinaud_dice  # measured 0.79
    # detected lesions that match a true one (IoU) sit in the true lesion's segment
    match = metrics.match_instances(result.lesion_labels, phantom_case.truth_lesions)
    truth_rows = {row["id"]: row for row in phantom_case.lesions}
    found_rows = {row["id"]: row for row in result.lesions}
    located = [found_rows[a]["main_segment"] == truth_rows[b]["main_segment"] for a, b, _ in match["pairs"]]
    assert located and np.mean(located) >= 0.5, located  # measured 1/1 (seed 7)
    # segment names, terminology and one segment per lesion
    segmentation = seg.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names[0] == "Liver" and "Couinaud VIII" in names and "Liver vessels" in names
    lesion_names = [n for n in names if n.startswith("Lesion ")]
    assert len(lesion_names) == len(result.lesions)
    for row in result.lesions:
        segment = segmentation.GetSegment(f"lesion_{row['id']}")
        assert segment.GetName().endswith(row["main_segment"])
        entry = segfile.parse_terminology_entry(mrml.segment_tag(segment, "TerminologyEntry"))
        assert entry["category"] == labels.MORPHOLOGICALLY_ALTERED_STRUCTURE and entry["region"] == segfile.LIVER_REGION
    # the lesion table holds the pipeline's rows
    table = out["table"]
    assert table.GetNumberOfRows() == len(result.lesions)
    for i, row in enumerate(result.lesions):
        assert table.GetTable().GetColumnByName("main_segment").GetValue(i) == row["main_segment"]
        assert table.GetTable().GetColumnByName("volume_ml").GetValue(i) == pytest.approx(row["volume_ml"])
    # the denoised volume lies on the input grid; outputs sit in the input's study
    denoised = out["denoised"]
    np.testing.assert_allclose(mrml.volume_ijk_to_ras(denoised), mrml.volume_ijk_to_ras(volume))
    assert out["gradcam"] is None
    for node in (seg, table, denoised):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study
    # the node saved by Slicer as .seg.nrrd reads back identical, through Slicer and through segfile
    storage = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "result.seg.nrrd"))
    assert storage.WriteData(seg) == 1
    _, read = segfile.read_seg_nrrd(tmp_path / "result.seg.nrrd")
    reloaded = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    reader = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(tmp_path / "result.seg.nrrd"))
    assert reader.ReadData(reloaded) == 1
    for item in read:
        mask = mrml.segment_to_array(seg, item["id"], volume)
        np.testing.assert_array_equal(item["mask"], mask)
        np.testing.assert_array_equal(mrml.segment_to_array(reloaded, item["id"], volume), mask)

    # a rerun into the same output nodes reuses them and adds no nodes
    n_nodes = slicer_scene.GetNumberOfNodes()
    assert out.table is out["table"] and out.nodes()["segmentation"] is out.segmentation
    again = mrml.run_on_nodes(volume, markups, options=PipelineOptions(classify=False), outputs=out.nodes())
    assert all(again[k] is out[k] for k in ("segmentation", "table", "denoised"))
    assert slicer_scene.GetNumberOfNodes() == n_nodes and again["warnings"] == out["warnings"]


def test_run_on_real_crop_with_liver_mask_segment(slicer_scene, ircadb_crop_dir):
    from LiverLocalizationLib import metrics
    from LiverLocalizationLib.pipeline import PipelineOptions

    ct = io.read_image(ircadb_crop_dir / "ct.nii.gz")
    liver = sitk.GetArrayFromImage(io.read_image(ircadb_crop_dir / "mask_liver.nii.gz")) > 0
    couinaud = sitk.GetArrayFromImage(io.read_image(ircadb_crop_dir / "couinaud_labels.nii.gz"))
    volume = mrml.image_to_volume_node(ct, "IRCAD 1.1")
    markups = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "landmarks")
    storage = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode")
    storage.SetFileName(str(ircadb_crop_dir / "landmarks.mrk.json"))
    assert storage.ReadData(markups) == 1
    user = mrml.write_segments(None, volume, [segfile.SegmentSpec("my_liver", "My liver", liver, labels.LIVER)], name="user")
    before = _input_state(volume, markups, user)
    out = mrml.run_on_nodes(volume, markups, user, "my_liver", options=PipelineOptions(classify=False))
    _assert_same_state(before, _input_state(volume, markups, user))
    seg = out["segmentation"]
    assert seg is not user
    np.testing.assert_array_equal(mrml.segment_to_array(seg, "liver", volume), liver)
    dice = [metrics.dice(mrml.segment_to_array(seg, f"couinaud_{r}", volume), couinaud == v) for v, r in labels.COUINAUD_ROMAN.items()]
    assert np.mean(dice) > 0.85, dice  # measured 0.923 (landmark planes against the reference annotation)
    with pytest.raises(InputError, match="liver segment"):
        mrml.run_on_nodes(volume, markups, user, None)
    with pytest.raises(InputError, match="inputs are never overwritten"):
        mrml.run_on_nodes(volume, markups, user, "my_liver", outputs={"segmentation": user})
    with pytest.raises(InputError, match="inputs are never overwritten"):
        mrml.run_on_nodes(volume, markups, outputs={"denoised": volume})
    with pytest.raises(InputError, match="no segment with ID"):
        mrml.run_on_nodes(volume, markups, user, "nope")


def test_run_with_classifier_fills_gradcam_volume_and_kinds(tmp_path, slicer_scene, phantom_case):
    """Plumbing of the classification outputs into the scene (the shipped weights when present, else an
    untrained network saved as safetensors: this test checks nodes and geometry, not accuracy)."""
    pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("safetensors", reason="safetensors is not installed")
    import torch
    from LiverLocalizationLib import classifier
    from LiverLocalizationLib.pipeline import PipelineOptions

    weights = classifier.DEFAULT_WEIGHTS
    if not weights.is_file():
        torch.manual_seed(0)
        card = {"kinds": list(classifier.KINDS), "architecture": dict(classifier.ARCHITECTURE_DEFAULTS),
                "patch": dict(classifier.PATCH_DEFAULTS), "temperature": 1.0}
        weights = classifier.save_model(classifier.build_model(), card, tmp_path / "untrained.safetensors")
    volume = mrml.image_to_volume_node(phantom_case.ct, "Phantom")
    markups = mrml.landmarks_to_markups(phantom_case.landmarks, "Phantom landmarks")
    out = mrml.run_on_nodes(volume, markups, options=PipelineOptions(classify=True, weights_path=str(weights)))
    result = out["result"]
    if not result.lesions:
        pytest.skip("no lesion detected on this phantom: nothing to classify")
    gradcam = out["gradcam"]
    assert gradcam is not None
    np.testing.assert_allclose(mrml.volume_ijk_to_ras(gradcam), mrml.volume_ijk_to_ras(volume))
    values = sitk.GetArrayFromImage(mrml.volume_node_to_image(gradcam))
    assert values.min() >= 0.0 and values.max() <= 1.0 + 1e-6 and values.max() > 0
    assert gradcam.GetDisplayNode().GetApplyThreshold()
    table = out["table"].GetTable()
    for i, row in enumerate(result.lesions):
        assert table.GetColumnByName("kind").GetValue(i) == row["kind"]
        assert table.GetColumnByName("malignant_probability").GetValue(i) == pytest.approx(row["malignant_probability"])
        name = out["segmentation"].GetSegmentation().GetSegment(f"lesion_{row['id']}").GetName()
        assert row["kind"] in name


def test_lesion_clicks_are_read_with_any_label_and_placed_by_click(slicer_scene):
    """Lesion points keep every placed point (empty or repeated labels named so that none is lost, in LPS) and
    skip unplaced ones; `start_point_placement` adds a point and puts the scene in place mode for it."""
    node = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion clicks")
    assert mrml.markups_to_points(None) == {}
    node.AddControlPoint(1.0, 2.0, 3.0, "")
    node.SetNthControlPointLabel(0, " ")  # Slicer names a new point itself; a user may clear the name
    node.AddControlPoint(4.0, 5.0, 6.0, "a")
    node.AddControlPoint(7.0, 8.0, 9.0, "a")
    index = mrml.start_point_placement(node, "lesion 4")
    interaction = slicer_scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    selection = slicer_scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    assert index == 3 and node.GetNthControlPointLabel(index) == "lesion 4"
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert selection.GetActivePlaceNodeID() == node.GetID()
    points = mrml.markups_to_points(node)
    assert list(points) == ["point 1", "a", "a (3)"]  # the point being placed is not yet defined
    np.testing.assert_allclose(points["point 1"], [-1.0, -2.0, 3.0])
    np.testing.assert_allclose(points["a (3)"], [-7.0, -8.0, 9.0])
    node.SetNthControlPointPositionWorld(index, 10.0, 11.0, 12.0)
    np.testing.assert_allclose(mrml.markups_to_points(node)["lesion 4"], [-10.0, -11.0, 12.0])


def test_rerun_with_nine_segments_replaces_iv_by_iva_and_ivb_with_their_terminology(slicer_scene):
    """The result's Couinaud segments (`pipeline.result_segments`) written into Slicer: eight, then a rerun with
    nine puts Couinaud IVa and IVb (IV with the modifier Superior / Inferior) in place of the unedited IV."""
    from types import SimpleNamespace

    from LiverLocalizationLib import geometry, pipeline

    ct = _oblique_ct()
    volume = mrml.image_to_volume_node(ct, "CT")
    shape = tuple(reversed(ct.GetSize()))
    liver = _ball(shape, (10, 15, 18), 9)
    z, _, x = np.indices(shape)
    eight = np.where(liver, np.where(x >= 18, 4, 7), 0).astype(np.uint8)
    nine = np.where(eight == 4, np.where(z >= 10, 4, 9), eight).astype(np.uint8)

    def result(array, segments):
        return SimpleNamespace(liver_mask=geometry.copy_geometry(liver.astype(np.uint8), ct), lesions=[],
                               lesion_labels=geometry.copy_geometry(np.zeros(shape, np.uint16), ct),
                               vessel_mask=geometry.copy_geometry(np.zeros(shape, np.uint8), ct),
                               couinaud=geometry.copy_geometry(array, ct), couinaud_segments=segments)

    node = mrml.write_segments(None, volume, pipeline.result_segments(result(eight, 8)))
    assert "couinaud_IV" in _ids(node) and "couinaud_IVa" not in _ids(node)
    user_id = node.GetSegmentation().AddEmptySegment("mine", "Mine", [0.0, 1.0, 0.0])
    node = mrml.write_segments(node, volume, pipeline.result_segments(result(nine, 9)))
    ids = _ids(node)
    assert "couinaud_IV" not in ids and ids[-1] == user_id  # the user's segment stays after the generated ones
    assert [i for i in ids if i.startswith("couinaud_")] == [f"couinaud_{n}" for n in labels.couinaud_names(9).values()]
    for segment_id, value, modifier in (("couinaud_IVa", 4, "Superior"), ("couinaud_IVb", 9, "Inferior")):
        segment = node.GetSegmentation().GetSegment(segment_id)
        assert segment.GetName() == f"Couinaud {segment_id.split('_')[1]}"
        np.testing.assert_allclose(segment.GetColor(), labels.couinaud_styles(9)[value].color, atol=1e-6)
        entry = segfile.parse_terminology_entry(mrml.segment_tag(segment, "TerminologyEntry"))
        assert entry["type"].meaning == "Hepatic segment IV" and entry["modifier"].meaning == modifier
        np.testing.assert_array_equal(mrml.segment_to_array(node, segment_id, volume), nine == value)
