"""Inside the Slicer application: .seg.nrrd files written by LiverLocalizationLib load through Slicer's IO
plugins (slicer.util.loadSegmentation) with names, colours, terminology and voxels intact, and files
Slicer saves read back with LiverLocalizationLib.segfile."""

import os
import tempfile
import unittest

import numpy as np
import SimpleITK as sitk
import slicer

from LiverLocalizationLib import labels, mrml, segfile


class LiverLocalizationSegFileTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()
        self.tmp = tempfile.mkdtemp()
        ref = sitk.Image((40, 36, 24), sitk.sitkInt16)
        ref.SetSpacing((0.8, 0.8, 2.0))
        ref.SetOrigin((-20.0, 15.0, 100.0))
        a = 0.25
        ref.SetDirection((np.cos(a), -np.sin(a), 0, np.sin(a), np.cos(a), 0, 0, 0, 1))
        self.reference = ref
        z, y, x = np.indices((24, 36, 40))
        liver = (x - 20) ** 2 / 200 + (y - 18) ** 2 / 120 + (z - 12) ** 2 / 60 < 1
        lesion = (x - 23) ** 2 + (y - 18) ** 2 + (z - 12) ** 2 < 9
        self.specs = [
            segfile.SegmentSpec("liver", "Liver", liver, labels.LIVER),
            segfile.SegmentSpec("lesion_1", "Lesion 1 – metastasis – VIII", lesion, labels.NEOPLASM_STYLE),
            segfile.SegmentSpec("couinaud_VIII", "Couinaud VIII", liver & (x >= 20), labels.COUINAUD_STYLES[8]),
        ]

    def runTest(self):
        self.setUp()
        self.test_load_our_file()
        self.setUp()
        self.test_read_saved_node()

    def test_load_our_file(self):
        path = segfile.write_seg_nrrd(os.path.join(self.tmp, "ours.seg.nrrd"), self.reference, self.specs)
        volume = mrml.image_to_volume_node(self.reference, "reference")
        node = slicer.util.loadSegmentation(str(path))
        segmentation = node.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), len(self.specs))
        for spec in self.specs:
            segment = segmentation.GetSegment(spec.segment_id)
            self.assertEqual(segment.GetName(), spec.name)
            np.testing.assert_allclose(segment.GetColor(), spec.style.color, atol=1e-6)
            self.assertIn(spec.style.type.value, segment.GetTerminology())
            np.testing.assert_array_equal(mrml.segment_to_array(node, spec.segment_id, volume), spec.mask)

    def test_read_saved_node(self):
        volume = mrml.image_to_volume_node(self.reference, "reference")
        node = mrml.write_segments(None, volume, self.specs)
        path = os.path.join(self.tmp, "saved.seg.nrrd")
        self.assertTrue(slicer.util.saveNode(node, path))
        grid, segments = segfile.read_seg_nrrd(path)
        np.testing.assert_allclose(grid.GetDirection(), self.reference.GetDirection(), atol=1e-9)
        for read, spec in zip(segments, self.specs):
            self.assertEqual(read["name"], spec.name)
            np.testing.assert_array_equal(read["mask"], spec.mask)
