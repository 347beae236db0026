"""Packaging of the Slicer extension: CMake lists match the files, the .ui holds every widget the module uses,
icons, the Extensions Index description file, and the module file's import-time rules."""

from __future__ import annotations

import ast
import json
import pkgutil
import re
import struct
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LiverLocalization"
MODULE_FILE = MODULE_DIR / "LiverLocalization.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LiverLocalization.ui"

# Widget class expected for every `self.ui.<name>` the module uses
EXPECTED_WIDGETS = {
    "inputVolumeSelector": "qMRMLNodeComboBox",
    "landmarksSelector": "qMRMLNodeComboBox",
    "proposeLandmarksButton": "QPushButton",
    "liverSegmentationSelector": "qMRMLNodeComboBox",
    "liverSegmentComboBox": "QComboBox",
    "landmarkButtonsFrame": "QFrame",
    "landmarksStatusLabel": "QLabel",
    "denoiseMethodComboBox": "QComboBox",
    "medianRadiusSliderWidget": "ctkSliderWidget",
    "compareDenoisedButton": "QPushButton",
    "nClassesSpinBox": "QSpinBox",
    "minLesionVolumeSliderWidget": "ctkSliderWidget",
    "lesionFalseAlarmsSpinBox": "QDoubleSpinBox",
    "lesionPointsSelector": "qMRMLNodeComboBox",
    "markLesionButton": "QPushButton",
    "couinaudMethodComboBox": "QComboBox",
    "classifyCheckBox": "QCheckBox",
    "weightsPathLineEdit": "ctkPathLineEdit",
    "outputSegmentationSelector": "qMRMLNodeComboBox",
    "outputTableSelector": "qMRMLNodeComboBox",
    "denoisedVolumeSelector": "qMRMLNodeComboBox",
    "gradcamVolumeSelector": "qMRMLNodeComboBox",
    "installDependenciesButton": "QPushButton",
    "dependenciesStatusLabel": "QLabel",
    "applyButton": "QPushButton",
    "cancelButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "resultsCollapsibleButton": "ctkCollapsibleButton",
    "resultsSummaryLabel": "QLabel",
    "lesionTableView": "qMRMLTableView",
    "showCouinaudButton": "QPushButton",
    "showLesionsButton": "QPushButton",
    "showGradCamButton": "QPushButton",
}
SECTIONS = ("Inputs", "Landmarks", "Denoising", "Tissue model", "Couinaud segments", "Classification", "Outputs", "Advanced",
            "Results")
# parameter type -> widget classes parameterNodeWrapper can connect it to
PARAMETER_WIDGETS = {
    "vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"}, "vtkMRMLMarkupsFiducialNode": {"qMRMLNodeComboBox"},
    "vtkMRMLSegmentationNode": {"qMRMLNodeComboBox"}, "vtkMRMLTableNode": {"qMRMLNodeComboBox"},
    "str": {"QComboBox"}, "float": {"ctkSliderWidget", "QDoubleSpinBox"}, "int": {"QSpinBox", "QSlider"},
    "bool": {"QCheckBox"},
}
ALLOWED_TOP_LEVEL_IMPORTS = {"slicer", "vtk", "qt", "ctk", "SimpleITK", "numpy", "scipy", "LiverLocalizationLib", "__future__"}


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set"
    return [line.strip() for line in match.group(1).split() if line.strip() and not line.strip().startswith("#")]


def _cmake_value(text: str, variable: str) -> str:
    match = re.search(rf'set\({variable}\s+"([^"]*)"\)', text)
    assert match, f"{variable} not set"
    return match.group(1)


def _ui_widgets() -> dict[str, ET.Element]:
    tree = ET.parse(UI_FILE)
    return {w.get("name"): w for w in tree.iter("widget")}


def _ui_names_used_by_module() -> set[str]:
    source = MODULE_FILE.read_text(encoding="utf-8")
    return set(re.findall(r"self\.ui\.(\w+)", source))


# ------------------------------------------------------------------------ CMake

def test_module_cmake_lists_every_python_file_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = {s.replace("${MODULE_NAME}", "LiverLocalization") for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    on_disk = {"LiverLocalization.py"} | {
        p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "LiverLocalizationLib").rglob("*.py")
        if "__pycache__" not in p.parts}
    assert sorted(on_disk - scripts) == [], ("Python files missing from MODULE_PYTHON_SCRIPTS in LiverLocalization/CMakeLists.txt "
                                            "(run LiverLocalization/Testing/update_cmake_lists.py)")
    assert sorted(scripts - on_disk) == [], "MODULE_PYTHON_SCRIPTS lists files that do not exist"
    resources = {s.replace("${MODULE_NAME}", "LiverLocalization") for s in _cmake_list(text, "MODULE_PYTHON_RESOURCES")}
    resources_on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts}
    assert sorted(resources_on_disk - resources) == [], "resources missing from MODULE_PYTHON_RESOURCES"
    assert sorted(resources - resources_on_disk) == [], "MODULE_PYTHON_RESOURCES lists files that do not exist"
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    testing = (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    for script in re.findall(r"SCRIPT\s+(\S+?\.py)", testing):
        assert (MODULE_DIR / "Testing" / "Python" / script).exists(), script


def test_extension_cmake_meta_information():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"^project\(LiverLocalization\)", text, re.M)
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert _cmake_value(text, f"EXTENSION_{key}").strip(), key
    assert _cmake_value(text, "EXTENSION_DEPENDS") == "PyTorch"
    assert "find_package(Slicer REQUIRED)" in text and "add_subdirectory(LiverLocalization)" in text
    assert not "LiverLocalization".lower().startswith("slicer")
    # icon and screenshots named in the URLs are files of this repository
    for url in [_cmake_value(text, "EXTENSION_ICONURL")] + _cmake_value(text, "EXTENSION_SCREENSHOTURLS").split():
        relative = url.split("/main/", 1)[1]
        assert (ROOT / relative).is_file(), f"{relative} (named in the top-level CMakeLists.txt) is missing"


def test_extensions_index_description_file():
    doc = json.loads((ROOT / "LiverLocalization.json").read_text(encoding="utf-8"))
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies", "dicom_support_rule",
               "build_subdirectory", "enabled", "tier"}
    assert set(doc) <= allowed
    assert {"$schema", "category", "scm_url"} <= set(doc)
    assert "slicer-extension-catalog-entry-schema" in doc["$schema"]
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert doc["category"] == _cmake_value(cmake, "EXTENSION_CATEGORY")
    assert doc["build_dependencies"] == _cmake_value(cmake, "EXTENSION_DEPENDS").split()
    assert 1 <= doc.get("tier", 1) <= 5


# ------------------------------------------------------------------------ UI

def test_ui_has_every_widget_the_module_uses_with_the_right_class():
    widgets = _ui_widgets()
    used = _ui_names_used_by_module()
    assert used, "the module uses no self.ui widgets?"
    unknown = used - set(EXPECTED_WIDGETS)
    assert not unknown, f"module uses widgets this test does not know yet: {sorted(unknown)}"
    for name in used:
        assert name in widgets, f"'{name}' is used by LiverLocalization.py but missing from the .ui"
        assert widgets[name].get("class") == EXPECTED_WIDGETS[name], name
    titles = {w.find("property[@name='text']/string").text for w in widgets.values() if w.get("class") == "ctkCollapsibleButton"}
    assert set(SECTIONS) <= titles


def test_ui_parameter_bindings_match_the_parameter_node():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LiverLocalizationParameterNode")
    fields = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign):
            annotation = stmt.annotation
            if isinstance(annotation, ast.Subscript):  # Annotated[type, ...]
                annotation = annotation.slice.elts[0]
            fields[stmt.target.id] = ast.unparse(annotation)
    bound = {}
    for widget in _ui_widgets().values():
        prop = widget.find("property[@name='SlicerParameterName']/string")
        if prop is not None:
            bound[prop.text] = widget.get("class")
    assert set(bound) <= set(fields), f"the .ui binds unknown parameters {set(bound) - set(fields)}"
    for name, widget_class in bound.items():
        assert widget_class in PARAMETER_WIDGETS[fields[name]], (name, fields[name], widget_class)
    # every node-typed parameter is editable in the GUI
    node_fields = {k for k, v in fields.items() if v.startswith("vtkMRML")}
    assert node_fields <= set(bound)


def test_mrml_widgets_get_the_scene():
    tree = ET.parse(UI_FILE)
    receivers = {c.findtext("receiver") for c in tree.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    mrml_widgets = {n for n, w in _ui_widgets().items() if w.get("class", "").startswith("qMRML") and n != "LiverLocalization"}
    assert mrml_widgets <= receivers


# ------------------------------------------------------------------------ icons and module file

def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("path", ["LiverLocalization/Resources/Icons/LiverLocalization.png", "Resources/Icons/LiverLocalization.png"])
def test_icons_are_128_png(path):
    assert _png_size(ROOT / path) == (128, 128)


def _stdlib_module_names() -> set[str]:
    if sys.version_info >= (3, 10):
        return set(sys.stdlib_module_names)  # novermin (guarded)
    # Python 3.9 (Slicer 5.6-5.8): the builtin modules and those in the standard library's folder
    stdlib_dir = Path(sysconfig.get_paths()["stdlib"])
    found = {m.name for m in pkgutil.iter_modules([str(stdlib_dir), str(stdlib_dir / "lib-dynload")])}
    return found | set(sys.builtin_module_names) | {"__future__"}


def test_module_file_imports_only_slicer_bundled_packages_at_load():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    stdlib = _stdlib_module_names()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in ALLOWED_TOP_LEVEL_IMPORTS or top in stdlib, f"module-level import of {name}"
    # the library modules imported at load must themselves be light (stdlib only)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "LiverLocalizationLib":
            for alias in node.names:
                lib = ast.parse((MODULE_DIR / "LiverLocalizationLib" / f"{alias.name}.py").read_text(encoding="utf-8"))
                for inner in lib.body:
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        mods = [a.name for a in inner.names] if isinstance(inner, ast.Import) else [inner.module or ""]
                        assert all(m.split(".")[0] in stdlib for m in mods if m), (alias.name, mods)


def test_module_has_the_four_template_classes_and_sample_registration():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"LiverLocalization", "LiverLocalizationWidget", "LiverLocalizationLogic", "LiverLocalizationTest"} <= set(classes)
    assert [ast.unparse(b) for b in classes["LiverLocalizationTest"].bases] == ["ScriptedLoadableModuleTest"]
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "registerSampleData" in functions
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert 'slicer.app.connect("startupCompleted()", registerSampleData)' in source
    assert "tryWithErrorDisplay" in source and "parameterNodeWrapper" in source
    assert "pip_install(\"torch" not in source and "PyTorchUtils" in source


# ------------------------------------------------------------------------ the module's Logic and self-test on real MRML

@pytest.fixture
def module_file(monkeypatch, slicer_scene):
    """LiverLocalization.py imported on a headless slicer-core scene.

    slicer-core lacks the Qt-side Python modules the file imports at load (ScriptedLoadableModule base classes,
    i18n, parameterNodeWrapper) and the application's slice-view layout; minimal stand-ins are put in their
    place for the duration of the test. Everything the Logic and the self-test compute runs on Slicer's real
    MRML library.
    """
    import importlib.util
    import types

    import slicer

    class Base:
        def __init__(self, *args, **kwargs):
            pass

    class TestBase:
        def delayDisplay(self, message):
            pass

        def assertEqual(self, a, b):
            assert a == b, (a, b)

        def assertGreater(self, a, b):
            assert a > b, (a, b)

        def assertGreaterEqual(self, a, b):
            assert a >= b, (a, b)

        def assertTrue(self, a):
            assert a

        def assertIsNotNone(self, a):
            assert a is not None

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = scripted.ScriptedLoadableModuleWidget = scripted.ScriptedLoadableModuleLogic = Base
    scripted.ScriptedLoadableModuleTest = TestBase
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = wrapper.WithinRange = lambda *args: None
    for name, module in (("slicer.ScriptedLoadableModule", scripted), ("slicer.i18n", i18n),
                         ("slicer.parameterNodeWrapper", wrapper)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda *args, **kwargs: None)
    spec = importlib.util.spec_from_file_location("LiverLocalization_module_under_test", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_module_self_test_and_logic_run_on_real_mrml(module_file, slicer_scene):
    from LiverLocalizationLib.pipeline import PipelineOptions

    test = module_file.LiverLocalizationTest()
    test.setUp = lambda: None
    test.test_LiverLocalization_phantom()  # the module's own end-to-end self-test (phantom, landmarks, Dice, locations)

    logic = module_file.LiverLocalizationLogic()
    volume = slicer_scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    landmarks = slicer_scene.GetFirstNodeByClass("vtkMRMLMarkupsFiducialNode")
    assert logic.inputProblem(volume, landmarks) is None
    assert "CT" in logic.inputProblem(None)
    partial = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "partial")
    partial.AddControlPoint(0.0, 0.0, 0.0, "IVC")
    assert "RHV" in logic.inputProblem(volume, partial)
    with pytest.raises(ValueError, match="RHV"):
        logic.process(volume, partial)
    outputs = logic.process(volume, landmarks, options=PipelineOptions(classify=False))
    assert outputs.table.GetNumberOfRows() == len(outputs.result.lesions)
    if outputs.result.lesions:
        assert logic.jumpToLesion(outputs.table, 0)
    logic.setSegmentsVisible(outputs.segmentation, "couinaud_", False)
    assert not outputs.segmentation.GetDisplayNode().GetSegmentVisibility("couinaud_VIII")
    assert logic.startLandmarkPlacement(landmarks, "UP") >= 0
    assert not logic.landmarkStatus(landmarks)["UP"]


def test_liver_segment_and_weights_path_are_kept_in_the_parameter_node():
    """Saved with the scene: the chosen liver segment's ID and the weights path are parameter-node strings, Apply
    reads them from there (not from the widgets), and the segment list follows segments added later."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    fields = {s.target.id: ast.unparse(s.annotation) for s in classes["LiverLocalizationParameterNode"].body
              if isinstance(s, ast.AnnAssign)}
    assert fields.get("liverSegmentId") == "str" and fields.get("weightsPath") == "str"
    methods = {n.name: n for n in classes["LiverLocalizationWidget"].body if isinstance(n, ast.FunctionDef)}
    for name in ("_options", "onApplyButton"):
        source = ast.unparse(methods[name])
        assert "weightsPathLineEdit" not in source and "liverSegmentComboBox" not in source, name
    assert "SegmentAdded" in ast.unparse(methods["_segmentEvents"])


def test_background_run_cancelled_or_its_input_deleted_writes_nothing(module_file, slicer_scene):
    """Apply's worker process: Cancel ends it and writes nothing; an input volume deleted while the worker runs
    (the run has its own copy) gets a clear message at the end instead of results beside a missing node; the job
    folder is removed either way."""
    import time

    from LiverLocalizationLib.pipeline import Cancelled, PipelineOptions

    logic = module_file.LiverLocalizationLogic()
    volume, landmarks, _ = logic.loadPhantomSample(seed=7)
    nodes_before = slicer_scene.GetNumberOfNodes()
    run = logic.startProcessing(volume, landmarks, options=PipelineOptions(classify=False))
    assert run.job_dir.is_dir()
    while not run.poll():
        time.sleep(0.1)
    assert run.cancel() < 2.0
    with pytest.raises(Cancelled):
        logic.finishProcessing(run)
    assert not run.job_dir.exists() and slicer_scene.GetNumberOfNodes() == nodes_before

    run = logic.startProcessing(volume, landmarks, options=PipelineOptions(classify=False, denoise_method="median"))
    slicer_scene.RemoveNode(volume)
    run.wait(300)
    with pytest.raises(ValueError, match="removed from the scene"):
        logic.finishProcessing(run)
    assert not run.job_dir.exists()
    assert slicer_scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None


def test_propose_landmarks_fills_a_new_point_list_and_names_the_missing(module_file, slicer_scene):
    """Propose landmarks: the Logic's point list holds what the library proposes for the same image (RAS in the node,
    LPS in the library), each point movable with its confidence in its description; a point list the user filled
    is never overwritten (a new one is made), an empty one is filled; what was not found comes back with the
    reason. The module's help and the README's tutorial name the button."""
    import numpy as np
    import SimpleITK as sitk
    from LiverLocalizationLib import labels, mrml, segfile
    from LiverLocalizationLib.landmarks import propose_landmarks

    logic = module_file.LiverLocalizationLogic()
    volume, userLandmarks, phantom = logic.loadPhantomSample(seed=7)
    userPoints = mrml.markups_to_landmarks(userLandmarks)
    liver = sitk.GetArrayFromImage(phantom.truth_couinaud) > 0
    segmentation = mrml.write_segments(None, volume, [segfile.SegmentSpec("liver", "Liver", liver, labels.LIVER)],
                                       name="liver mask")
    expected = propose_landmarks(mrml.volume_node_to_image(volume),
                                 mrml.segment_to_image(segmentation, "liver", volume))
    assert len(expected.points) >= 6  # the phantom shows its vessels

    node, missing = logic.proposeLandmarks(volume, segmentation, "liver", userLandmarks)
    assert node is not userLandmarks and node.GetID() != userLandmarks.GetID()
    assert mrml.markups_to_landmarks(userLandmarks).keys() == userPoints.keys()
    for k, lps in mrml.markups_to_landmarks(userLandmarks).items():  # the user's points did not move
        np.testing.assert_allclose(lps, userPoints[k])
    proposed = mrml.markups_to_landmarks(node)  # back to LPS
    assert set(proposed) == set(expected.points)
    for k, lps in proposed.items():
        assert np.linalg.norm(lps - expected.points[k]) < 3.0, k
    ras = np.zeros(3)
    for i in range(node.GetNumberOfControlPoints()):
        label = node.GetNthControlPointLabel(i)
        assert f"confidence {expected.confidence[label]:.2f}" in node.GetNthControlPointDescription(i)
        assert not node.GetNthControlPointLocked(i)
        node.GetNthControlPointPositionWorld(i, ras)
        np.testing.assert_allclose(ras[:2], -expected.points[label][:2], atol=3.0)  # RAS in the node: x, y flipped
    assert not node.GetLocked()
    assert missing == expected.missing and all(isinstance(why, str) and why for why in missing.values())

    # an empty point list the user chose is filled (no new node)
    empty = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "empty")
    filled, _ = logic.proposeLandmarks(volume, segmentation, "liver", empty)
    assert filled is empty and set(mrml.markups_to_landmarks(empty)) == set(expected.points)

    # a CT showing no vessels (a 60 HU liver in -100 HU fat): nothing is guessed, every landmark is missing with
    # its reason, and the new point list is empty
    flat = sitk.Cast(sitk.GetImageFromArray(liver.astype(np.int16)), sitk.sitkInt16) * 160 - 100
    flat.CopyInformation(phantom.ct)
    flatVolume = mrml.image_to_volume_node(flat, "flat")
    flatNode, flatMissing = logic.proposeLandmarks(flatVolume, segmentation, "liver")
    assert flatNode.GetNumberOfControlPoints() == 0
    assert set(flatMissing) == set(labels.LANDMARK_NAMES) and all(flatMissing.values())
    with pytest.raises(ValueError, match="segment"):
        logic.proposeLandmarks(volume, segmentation, "")

    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    helpText = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    and ast.unparse(n.targets[0]) == "self.parent.helpText")
    assert "Propose landmarks" in " ".join(c.value for c in ast.walk(helpText) if isinstance(c, ast.Constant)
                                           and isinstance(c.value, str))
    tutorial = (ROOT / "README.md").read_text(encoding="utf-8").split("## Tutorial (Slicer)", 1)[1].split("\n## ", 1)[0]
    assert "Propose landmarks" in tutorial
