"""Slicer .seg.nrrd files written and read without Slicer, checked against Slicer's own storage node."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from LiverLocalizationLib import labels, segfile
from LiverLocalizationLib.errors import InputError


def _oblique_reference(size=(40, 34, 22)) -> sitk.Image:
    """A small grid with anisotropic spacing, an oblique direction and a non-trivial origin (LPS)."""
    ref = sitk.Image(size, sitk.sitkInt16)
    ref.SetSpacing((0.7, 0.8, 2.5))
    ref.SetOrigin((-12.3, 45.6, -78.9))
    a, b = 0.3, 0.2
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ref.SetDirection((rz @ rx).ravel().tolist())
    return ref


def _phantom_specs(ref: sitk.Image) -> list[segfile.SegmentSpec]:
    """Liver ellipsoid, two lesions inside it, two Couinaud halves and an empty vessel segment."""
    nz, ny, nx = reversed(ref.GetSize())
    z, y, x = np.mgrid[:nz, :ny, :nx]
    liver = ((x - 20) ** 2 / 150 + (y - 17) ** 2 / 100 + (z - 11) ** 2 / 50) < 1
    lesion1 = ((x - 24) ** 2 + (y - 17) ** 2 + (z - 11) ** 2) < 8
    lesion2 = ((x - 14) ** 2 + (y - 14) ** 2 + (z - 9) ** 2) < 5
    return [
        segfile.SegmentSpec("liver", "Liver", liver, labels.LIVER),
        segfile.SegmentSpec("lesion_1", "Lesion 1 – metastasis – VII", lesion1, labels.NEOPLASM_STYLE),
        segfile.SegmentSpec("lesion_2", "Lesion 2 – cyst – II", lesion2, labels.CYST_STYLE, tags={"Note": "small"}),
        segfile.SegmentSpec("couinaud_II", "Couinaud II", liver & (x < 20), labels.COUINAUD_STYLES[2]),
        segfile.SegmentSpec("couinaud_VII", "Couinaud VII", liver & (x >= 20), labels.COUINAUD_STYLES[7]),
        segfile.SegmentSpec("vessels", "Liver vessels", np.zeros_like(liver), labels.VESSELS),
    ]


def _header(path) -> dict[str, str]:
    raw = path.read_bytes()
    head = raw[: raw.index(b"\n\n")].decode("utf-8")
    out = {}
    for line in head.splitlines()[1:]:
        if line.startswith("#"):
            continue
        if ":=" in line:
            key, value = line.split(":=", 1)
        else:
            key, value = line.split(": ", 1)
        out[key] = value
    return out


def test_round_trip_keeps_masks_names_colours_terminology_and_oblique_geometry(tmp_path):
    ref = _oblique_reference()
    specs = _phantom_specs(ref)
    path = segfile.write_seg_nrrd(tmp_path / "s.seg.nrrd", ref, specs)
    grid, segments = segfile.read_seg_nrrd(path)
    assert grid.GetSize() == ref.GetSize()
    np.testing.assert_allclose(grid.GetOrigin(), ref.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(grid.GetSpacing(), ref.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(grid.GetDirection(), ref.GetDirection(), atol=1e-12)
    assert [s["id"] for s in segments] == [s.segment_id for s in specs]
    for seg, spec in zip(segments, specs):
        assert seg["name"] == spec.name
        np.testing.assert_allclose(seg["color"], spec.style.color, atol=1e-6)
        np.testing.assert_array_equal(seg["mask"], spec.mask)
        assert seg["terminology"]["category"] == spec.style.category
        assert seg["terminology"]["type"] == spec.style.type
        assert seg["tags"][segfile.GENERATED_TAG] == "1"
        assert seg["tags"][segfile.CHECKSUM_TAG] == segfile.mask_checksum(spec.mask)
    assert segments[2]["tags"]["Note"] == "small"
    # lesions lie in the liver: anatomic region Liver; anatomical structures carry none
    assert segments[1]["terminology"]["region"] == segfile.LIVER_REGION
    assert segments[0]["terminology"]["region"] is None


def test_layers_crop_and_header_follow_slicer_conventions(tmp_path):
    ref = _oblique_reference()
    specs = _phantom_specs(ref)
    path = segfile.write_seg_nrrd(tmp_path / "s.seg.nrrd", ref, specs)
    header = _header(path)
    # liver | lesions + vessels | Couinaud: overlapping segments need three layers
    assert header["dimension"] == "4" and header["kinds"] == "list domain domain domain"
    sizes = [int(v) for v in header["sizes"].split()]
    assert sizes[0] == 3
    layers = [int(header[f"Segment{i}_Layer"]) for i in range(len(specs))]
    values = [int(header[f"Segment{i}_LabelValue"]) for i in range(len(specs))]
    assert layers[0] != layers[1] and layers[1] != layers[3] and layers[3] == layers[4]
    assert len({(la, v) for la, v in zip(layers, values)}) == len(specs)
    # cropped to the liver's bounding box; the offset is where that box starts
    liver_idx = np.argwhere(specs[0].mask)
    lower, upper = liver_idx.min(axis=0)[::-1], liver_idx.max(axis=0)[::-1]
    assert [int(v) for v in header["Segmentation_ReferenceImageExtentOffset"].split()] == list(lower)
    assert sizes[1:] == list(upper - lower + 1)
    # segment extents are relative to the cropped buffer (as Slicer writes them); empty segment: empty extent
    assert header["Segment0_Extent"] == " ".join(f"0 {n - 1}" for n in sizes[1:])
    assert header["Segment5_Extent"] == "0 -1 0 -1 0 -1"
    # the shifted origin places the crop correctly for readers that ignore the offset
    plain = sitk.ReadImage(str(path))
    expected = np.asarray(ref.TransformIndexToPhysicalPoint([int(v) for v in lower]))
    np.testing.assert_allclose(plain.GetOrigin(), expected, atol=1e-9)
    entry = header["Segment3_Tags"]
    assert "TerminologyEntry:Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure~" \
           "SCT^277956007^Hepatic segment II~^^~Anatomic codes - DICOM master list~^^~^^|" in entry


def test_single_layer_and_uncompressed_file(tmp_path):
    ref = _oblique_reference()
    specs = [s for s in _phantom_specs(ref) if s.segment_id.startswith("couinaud")]
    path = segfile.write_seg_nrrd(tmp_path / "c.seg.nrrd", ref, specs, compress=False, crop=False)
    header = _header(path)
    assert header["dimension"] == "3" and header["encoding"] == "raw"
    assert header["sizes"] == " ".join(str(v) for v in ref.GetSize())
    _, segments = segfile.read_seg_nrrd(path)
    for seg, spec in zip(segments, specs):
        np.testing.assert_array_equal(seg["mask"], spec.mask)


def test_many_segments_in_one_layer_use_16_bit_labels(tmp_path):
    ref = sitk.Image((30, 30, 30), sitk.sitkUInt8)
    specs = []
    for i in range(300):
        mask = np.zeros((30, 30, 30), dtype=bool)
        mask.flat[i * 50] = True
        specs.append(segfile.SegmentSpec(f"s{i}", f"S{i}", mask, labels.LESION_STYLE))
    path = segfile.write_seg_nrrd(tmp_path / "many.seg.nrrd", ref, specs)
    assert _header(path)["type"] == "unsigned short"
    _, segments = segfile.read_seg_nrrd(path)
    assert all((seg["mask"] == spec.mask).all() for seg, spec in zip(segments, specs))


def test_empty_segmentation_is_one_voxel_file(tmp_path):
    ref = _oblique_reference()
    spec = segfile.SegmentSpec("liver", "Liver", np.zeros(tuple(reversed(ref.GetSize())), bool), labels.LIVER)
    path = segfile.write_seg_nrrd(tmp_path / "e.seg.nrrd", ref, [spec])
    assert _header(path)["sizes"] == "1 1 1"
    grid, segments = segfile.read_seg_nrrd(path)
    assert grid.GetSize() == ref.GetSize() and not segments[0]["mask"].any()


def test_plain_label_map_reads_as_one_segment_per_label(tmp_path):
    arr = np.zeros((5, 6, 7), np.uint8)
    arr[1:3, 1:3, 1:3] = 2
    arr[4, 5, 6] = 7
    image = sitk.GetImageFromArray(arr)
    sitk.WriteImage(image, str(tmp_path / "plain.nrrd"))
    _, segments = segfile.read_seg_nrrd(tmp_path / "plain.nrrd")
    assert [s["label_value"] for s in segments] == [2, 7]
    np.testing.assert_array_equal(segments[0]["mask"], arr == 2)


def test_labelmap_export_orders_segments(tmp_path):
    ref = _oblique_reference()
    specs = _phantom_specs(ref)
    path = segfile.write_seg_nrrd(tmp_path / "s.seg.nrrd", ref, specs)
    labelmap = segfile.read_seg_nrrd_as_labelmap(path, ["couinaud_II", "couinaud_VII"])
    arr = sitk.GetArrayViewFromImage(labelmap)
    np.testing.assert_array_equal(arr == 1, specs[3].mask)
    np.testing.assert_array_equal(arr == 2, specs[4].mask)
    with pytest.raises(InputError, match="no segment with ID nope"):
        segfile.read_seg_nrrd_as_labelmap(path, ["nope"])


def test_bad_input_is_refused_with_a_clear_message(tmp_path):
    ref = _oblique_reference()
    specs = _phantom_specs(ref)
    wrong = segfile.SegmentSpec("x", "X", np.zeros((3, 3, 3), bool), labels.LIVER)
    with pytest.raises(InputError, match="mask shape"):
        segfile.write_seg_nrrd(tmp_path / "a.seg.nrrd", ref, [wrong])
    with pytest.raises(InputError, match="appears twice"):
        segfile.write_seg_nrrd(tmp_path / "a.seg.nrrd", ref, [specs[0], specs[0]])
    bad_tag = segfile.SegmentSpec("y", "Y", specs[0].mask, labels.LIVER, tags={"a": "b|c"})
    with pytest.raises(InputError, match="tag"):
        segfile.write_seg_nrrd(tmp_path / "a.seg.nrrd", ref, [bad_tag])
    with pytest.raises(InputError, match="no such"):
        segfile.read_seg_nrrd(tmp_path / "missing.seg.nrrd")
    (tmp_path / "junk.seg.nrrd").write_bytes(gzip.compress(b"not a nrrd"))
    with pytest.raises(InputError, match="cannot be read"):
        segfile.read_seg_nrrd(tmp_path / "junk.seg.nrrd")


def test_terminology_entry_parses_back():
    entry = segfile.terminology_entry(labels.NEOPLASM_STYLE, segfile.LIVER_REGION)
    assert entry.count("~") == 6
    parsed = segfile.parse_terminology_entry(entry)
    assert parsed["type"] == labels.NEOPLASM_STYLE.type and parsed["region"] == segfile.LIVER_REGION
    with pytest.raises(ValueError, match="7 expected"):
        segfile.parse_terminology_entry("a~b")


# ------------------------------------------------------------------------ against Slicer's own reader/writer

def _slicer_read(scene, path):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


@pytest.mark.parametrize("oblique", [False, True])
def test_slicer_storage_node_reads_our_file(tmp_path, slicer_scene, oblique):
    from LiverLocalizationLib import mrml

    ref = _oblique_reference()
    if not oblique:
        ref.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    specs = _phantom_specs(ref)
    path = segfile.write_seg_nrrd(tmp_path / "s.seg.nrrd", ref, specs)
    volume = mrml.image_to_volume_node(ref, "reference")
    node = _slicer_read(slicer_scene, path)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(specs)
    for index, spec in enumerate(specs):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        assert segment_id == spec.segment_id
        assert segment.GetName() == spec.name
        np.testing.assert_allclose(segment.GetColor(), spec.style.color, atol=1e-6)
        assert mrml.segment_tag(segment, "TerminologyEntry") == segfile.terminology_entry(spec.style, segfile.default_region(spec.style))
        np.testing.assert_array_equal(mrml.segment_to_array(node, segment_id, volume), spec.mask)


def test_our_reader_reads_slicer_cropped_file(tmp_path, slicer_scene):
    from LiverLocalizationLib import mrml

    ref = _oblique_reference()
    specs = _phantom_specs(ref)
    volume = mrml.image_to_volume_node(ref, "reference")
    node = mrml.write_segments(None, volume, specs)
    storage = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "slicer.seg.nrrd"))
    storage.SetCropToMinimumExtent(True)
    assert storage.WriteData(node) == 1
    header = _header(tmp_path / "slicer.seg.nrrd")
    assert header["Segmentation_ReferenceImageExtentOffset"] != "0 0 0"  # really cropped
    grid, segments = segfile.read_seg_nrrd(tmp_path / "slicer.seg.nrrd")
    assert grid.GetSize() == ref.GetSize()
    np.testing.assert_allclose(grid.GetOrigin(), ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(grid.GetDirection(), ref.GetDirection(), atol=1e-9)
    by_id = {s["id"]: s for s in segments}
    for spec in specs:
        np.testing.assert_array_equal(by_id[spec.segment_id]["mask"], spec.mask)
        assert by_id[spec.segment_id]["name"] == spec.name
        assert by_id[spec.segment_id]["terminology"]["type"] == spec.style.type


def test_real_couinaud_labels_round_trip_through_slicer(tmp_path, slicer_scene, ircadb_crop_dir):
    from LiverLocalizationLib import io, mrml

    ct = io.read_image(ircadb_crop_dir / "ct.nii.gz")
    couinaud = sitk.GetArrayFromImage(io.read_image(ircadb_crop_dir / "couinaud_labels.nii.gz"))
    liver = sitk.GetArrayFromImage(io.read_image(ircadb_crop_dir / "mask_liver.nii.gz")) > 0
    specs = [segfile.SegmentSpec("liver", "Liver", liver, labels.LIVER)]
    specs += [segfile.SegmentSpec(f"couinaud_{labels.COUINAUD_ROMAN[k]}", style.name, couinaud == k, style)
              for k, style in labels.COUINAUD_STYLES.items()]
    path = segfile.write_seg_nrrd(tmp_path / "real.seg.nrrd", ct, specs)
    assert path.stat().st_size < 200_000  # cropped and compressed
    volume = mrml.image_to_volume_node(ct, "CT")
    node = _slicer_read(slicer_scene, path)
    for spec in specs:
        np.testing.assert_array_equal(mrml.segment_to_array(node, spec.segment_id, volume), spec.mask)


def _payload(path) -> tuple[bytes, bytes]:
    raw = path.read_bytes()
    split = raw.index(b"\n\n")
    return raw[:split], gzip.decompress(raw[split + 2:])


def test_label_masks_write_the_same_file_as_arrays_and_keep_their_label_map_alive(tmp_path):
    import gc

    ref = _oblique_reference()
    arrays = _phantom_specs(ref)
    lesions = np.zeros(arrays[0].mask.shape, np.uint16)
    lesions[arrays[1].mask], lesions[arrays[2].mask] = 1, 2
    halves = np.where(arrays[0].mask, np.where(arrays[3].mask, 2, 7), 0).astype(np.uint8)

    def image(array):  # a temporary image: only the LabelMask holds it after this returns
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(ref)
        return out

    lazy = [segfile.SegmentSpec(s.segment_id, s.name, mask, s.style, s.tags) for s, mask in zip(arrays, [
        segfile.LabelMask(image(arrays[0].mask.astype(np.uint8))), segfile.LabelMask(image(lesions), 1),
        segfile.LabelMask(image(lesions), 2), segfile.LabelMask(image(halves), 2), segfile.LabelMask(halves, 7),
        segfile.LabelMask(image(np.zeros_like(lesions)))])]
    gc.collect()
    for spec, lazy_spec in zip(arrays, lazy):
        assert lazy_spec.mask.shape == spec.mask.shape
        np.testing.assert_array_equal(np.asarray(lazy_spec.mask), spec.mask, err_msg=spec.segment_id)
    a = segfile.write_seg_nrrd(tmp_path / "arrays.seg.nrrd", ref, arrays)
    b = segfile.write_seg_nrrd(tmp_path / "lazy.seg.nrrd", ref, lazy)
    assert _payload(a) == _payload(b)


def test_writing_label_masks_holds_one_full_grid_mask_at_a_time(tmp_path):
    import tracemalloc

    ref = sitk.Image((128, 128, 64), sitk.sitkUInt8)  # masks of 1 MiB each
    labels_arr = np.zeros((64, 128, 128), np.uint8)
    for k in range(1, 21):  # twenty small segments in a corner: the file's crop is small
        labels_arr[k, 2:6, 2:6] = k
    specs = [segfile.SegmentSpec(f"s{k}", f"S{k}", segfile.LabelMask(labels_arr, k), labels.LIVER) for k in range(1, 21)]
    tracemalloc.start()
    segfile.write_seg_nrrd(tmp_path / "many.seg.nrrd", ref, specs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * 2 ** 20, f"{peak / 2 ** 20:.1f} MiB: the twenty masks (20 MiB) were held together"
    _, segments = segfile.read_seg_nrrd(tmp_path / "many.seg.nrrd")
    for k, segment in enumerate(segments, start=1):
        np.testing.assert_array_equal(segment["mask"], labels_arr == k)
