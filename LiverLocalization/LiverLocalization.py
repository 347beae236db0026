"""Liver Localization: find liver tumours on CT and say in which Couinaud segment(s) they lie.

Scripted module in Slicer's ExtensionWizard layout: the Module, Widget, Logic and Test classes stay
thin; all computation is in LiverLocalizationLib (headless, tested with slicer-core), and the one
bridge to the scene is LiverLocalizationLib.mrml.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LiverLocalizationLib import labels

README_URL = "https://github.com/LiverLocalization/LiverLocalization#readme"
SAMPLE_CATEGORY = "Liver Localization"
SAMPLE_NAME = "Liver phantom"


#
# LiverLocalization
#


class LiverLocalization(ScriptedLoadableModule):
    """Module description shown in Slicer (title, category, help, acknowledgement); registers the sample data."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver Localization")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Markups", "Segmentations", "Tables"]
        self.parent.contributors = ["LiverLocalization contributors"]
        self.parent.helpText = _(
            "Finds liver tumours on a portal-venous CT and tells in which Couinaud segment(s) they lie: "
            "denoising, EM tissue segmentation (parenchyma, lesions, vessels), Couinaud segments I-VIII (or nine, "
            "with IVa above and IVb below the left portal plane) from vessel landmarks you place, and a CNN lesion classification with a Grad-CAM map. "
            "Propose landmarks places them from the CT for you to check and move (each point's description gives "
            "its confidence). Lesions are found by "
            "their contrast with the liver round them, judged against the liver's own variation at their size; "
            "a point you click inside a lesion the detection missed (Mark lesion) gives that lesion too. "
            f'See the <a href="{README_URL}">documentation and tutorial</a>.')
        self.parent.acknowledgementText = _(
            "Developed as open source (MIT licence). Real test data: 3D-IRCADb-01 (IRCAD, France); Couinaud "
            "annotations from the GLC-UNet set (Tian et al., MLMI 2019). The sample case is a synthetic phantom "
            "generated on your computer (nothing is downloaded).")
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data: a phantom generated locally (no download)
#


def registerSampleData():
    """Register the synthetic phantom in the Sample Data module (generated on click, nothing downloaded)."""
    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(iconsPath, "LiverPhantom.png"),
        uris=[],
        fileNames=[],
        customDownloader=lambda source: LiverLocalizationLogic().loadPhantomSample(),
    )


#
# LiverLocalizationParameterNode
#


@parameterNodeWrapper
class LiverLocalizationParameterNode:
    """The module's settings, saved with the scene.

    inputVolume - CT in Hounsfield units. landmarks - point list with the vessel landmarks (labels IVC, RHV, ...).
    liverSegmentation - optional segmentation holding a liver mask; liverSegmentId - the ID of its liver segment
    (the segment chosen in the GUI, kept with the scene).
    denoiseMethod, medianRadiusMm (mm) - denoising (of the liver's bounding box + 10 mm; the input elsewhere). nClasses - EM classes (0: chosen by BIC).
    lesionPoints - optional point list of clicks inside lesions the detection may miss (each gives that lesion's
    segmentation and segment; a click inside a detected lesion keeps it).
    minLesionVolumeMm3 (mm^3) - smaller lesions are dropped. lesionFalseAlarms - lesion sensitivity: chance detections
    expected in a liver (more finds fainter lesions and more false ones; 0: clicked lesions only).
    couinaudMethod - planes, portal territories, vessel-guided borders (hepatic veins and portal branches) or auto
    (vessel-guided when the vessel tree is complete, else planes). couinaudNineSegments - split IV into IVa (above)
    and IVb (below the left portal plane): segments I, II, III, IVa, IVb, V-VIII instead of I-VIII.
    classify - run the lesion classifier; weightsPath - its weights (.safetensors; empty: the shipped ones). Outputs: segmentation, lesion table, denoised and Grad-CAM volumes.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    landmarks: vtkMRMLMarkupsFiducialNode
    liverSegmentation: vtkMRMLSegmentationNode
    liverSegmentId: str = ""
    lesionPoints: vtkMRMLMarkupsFiducialNode
    denoiseMethod: Annotated[str, Choice(["curvature", "median", "bilateral", "none"])] = "curvature"
    medianRadiusMm: Annotated[float, WithinRange(0.5, 10.0)] = 1.0
    nClasses: Annotated[int, WithinRange(0, 8)] = 0
    minLesionVolumeMm3: Annotated[float, WithinRange(0.0, 10000.0)] = 100.0
    lesionFalseAlarms: Annotated[float, WithinRange(0.0, 10.0)] = 0.1
    couinaudMethod: Annotated[str, Choice(["auto", "planes", "territories", "vessels"])] = "auto"
    couinaudNineSegments: bool = False
    classify: bool = True
    weightsPath: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    outputTable: vtkMRMLTableNode
    denoisedVolume: vtkMRMLScalarVolumeNode
    gradcamVolume: vtkMRMLScalarVolumeNode


#
# LiverLocalizationWidget
#


class LiverLocalizationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module's panel: inputs, landmark placement, settings, Apply with progress, results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedMarkups = None
        self._observedSegmentation = None
        self._landmarkButtons = {}
        self._landmarkStatusLabels = {}
        self._running = False
        self._run = None  # the BackgroundRun while one works
        self._pollTimer = None

    def setup(self) -> None:
        """Build the panel from Resources/UI/LiverLocalization.ui and connect it."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverLocalization.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LiverLocalizationLogic()

        self._buildLandmarkButtons()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.liverSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._observeLiverSegmentation)
        self.ui.liverSegmentComboBox.connect("currentIndexChanged(int)", self._onLiverSegmentChosen)
        self.ui.weightsPathLineEdit.connect("currentPathChanged(QString)", self._onWeightsPathChanged)
        self.ui.landmarksSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._observeLandmarks)
        self.ui.compareDenoisedButton.connect("toggled(bool)", self.onCompareDenoised)
        self.ui.showCouinaudButton.connect("toggled(bool)", self.onShowCouinaud)
        self.ui.showLesionsButton.connect("toggled(bool)", self.onShowLesions)
        self.ui.showGradCamButton.connect("toggled(bool)", self.onShowGradCam)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.markLesionButton.connect("clicked(bool)", self.onMarkLesion)
        self.ui.proposeLandmarksButton.connect("clicked(bool)", self.onProposeLandmarks)
        self.ui.lesionTableView.connect("doubleClicked(QModelIndex)", self.onLesionDoubleClicked)
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.setVisible(False)
        import qt

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(250)
        self._pollTimer.connect("timeout()", self._onPollRun)
        self.initializeParameterNode()

    def _buildLandmarkButtons(self) -> None:
        """One 'Place' button per landmark (label, status, where it goes) in the Landmarks section."""
        import qt

        layout = self.ui.landmarkButtonsFrame.layout()
        for row, name in enumerate(labels.LANDMARK_NAMES):
            button = qt.QPushButton(name)
            button.objectName = f"place{name}Button"
            button.toolTip = labels.LANDMARK_DESCRIPTIONS[name]
            button.connect("clicked(bool)", lambda checked, n=name: self.onPlaceLandmark(n))
            status = qt.QLabel()
            description = qt.QLabel(labels.LANDMARK_DESCRIPTIONS[name])
            description.wordWrap = True
            layout.addWidget(button, row, 0)
            layout.addWidget(status, row, 1)
            layout.addWidget(description, row, 2)
            self._landmarkButtons[name] = button
            self._landmarkStatusLabels[name] = status

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed: a run still working is ended."""
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if self._run is not None:
            self._run.cancel()
            self._run = None
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None:  # its inputs and outputs leave with the scene
            self._pollTimer.stop()
            self._run.cancel()
            self._run = None
            self._setRunning(False)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Create/observe the parameter node and pick the first CT and point list when none is selected."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: LiverLocalizationParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if not self._parameterNode:
            self._observeLiverSegmentation(None)
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._observeLandmarks(self._parameterNode.landmarks)
            self._observeLiverSegmentation(self._parameterNode.liverSegmentation)
            self.ui.weightsPathLineEdit.currentPath = self._parameterNode.weightsPath
            self._checkCanApply()

    # ---------------------------------------------------------------- inputs and landmarks

    def _observeLandmarks(self, node=None) -> None:
        if self._observedMarkups is not None:
            for event in self._markupsEvents():
                self.removeObserver(self._observedMarkups, event, self._updateLandmarkStatus)
        self._observedMarkups = node
        if node is not None:
            for event in self._markupsEvents():
                self.addObserver(node, event, self._updateLandmarkStatus)
        self._updateLandmarkStatus()

    @staticmethod
    def _markupsEvents() -> tuple[int, ...]:
        markups = slicer.vtkMRMLMarkupsNode
        return (markups.PointModifiedEvent, markups.PointPositionDefinedEvent, markups.PointPositionUndefinedEvent,
                markups.PointRemovedEvent, markups.PointAddedEvent)

    def _updateLandmarkStatus(self, caller=None, event=None) -> None:
        status = self.logic.landmarkStatus(self._parameterNode.landmarks if self._parameterNode else None)
        for name, label in self._landmarkStatusLabels.items():
            optional = name in labels.OPTIONAL_LANDMARKS
            label.text = _("placed") if status.get(name) else (_("optional") if optional else _("missing"))
            label.setStyleSheet("" if status.get(name) or optional else "color: #c0392b; font-weight: bold")
        missing = [n for n in labels.REQUIRED_LANDMARKS if not status.get(n)]
        if not missing:
            text = _("All required landmarks are placed.")
        elif len(missing) == len(labels.REQUIRED_LANDMARKS):
            text = _("No landmarks placed: the analysis runs without Couinaud segments.")
        else:
            text = _("Missing: {names}. Place them (or select no point list) to run.").format(names=", ".join(missing))
        self.ui.landmarksStatusLabel.text = text
        self._checkCanApply()

    def onPlaceLandmark(self, name: str) -> None:
        """Start placing (or re-placing) the landmark `name` in the selected point list (created when none)."""
        with slicer.util.tryWithErrorDisplay(_("Could not start landmark placement."), waitCursor=False):
            if not self._parameterNode.landmarks:
                node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", _("Liver landmarks"))
                node.CreateDefaultDisplayNodes()
                self._parameterNode.landmarks = node
            self.logic.startLandmarkPlacement(self._parameterNode.landmarks, name)

    def onProposeLandmarks(self) -> None:
        """Propose the landmarks from the CT (and the liver segment) into a new point list, or the chosen one when it
        is empty, and choose it; the landmarks not found are named with the reason."""
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not propose landmarks."), waitCursor=True):
            liverSegmentId = (p.liverSegmentId or "") if p.liverSegmentation else ""
            if not self.logic.ensureDependencies(liverMaskGiven=bool(liverSegmentId), classify=False, askConfirmation=True):
                return
            node, missing = self.logic.proposeLandmarks(p.inputVolume, p.liverSegmentation, liverSegmentId, p.landmarks)
            p.landmarks = node
            if missing:
                slicer.util.infoDisplay(_("Not proposed (place them with their buttons):") + "\n" + "\n".join(
                    f"{name}: {why}" for name, why in missing.items()), windowTitle=_("Propose landmarks"))

    def onMarkLesion(self) -> None:
        """Start placing a point inside a lesion that the detection missed (in the selected lesion point list,
        created when none)."""
        with slicer.util.tryWithErrorDisplay(_("Could not start placing a lesion point."), waitCursor=False):
            if not self._parameterNode.lesionPoints:
                node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", _("Lesions"))
                node.CreateDefaultDisplayNodes()
                self._parameterNode.lesionPoints = node
            self.logic.startLesionPointPlacement(self._parameterNode.lesionPoints)

    @staticmethod
    def _segmentEvents() -> tuple[int, ...]:
        segmentation = slicer.vtkSegmentation
        return (segmentation.SegmentAdded, segmentation.SegmentRemoved, segmentation.SegmentModified)

    def _observeLiverSegmentation(self, node=None) -> None:
        """Follow the segments of the chosen liver segmentation: the list stays current when segments are added,
        removed or renamed after it was chosen."""
        if self._observedSegmentation is not None:
            for event in self._segmentEvents():
                self.removeObserver(self._observedSegmentation, event, self._updateLiverSegmentList)
        self._observedSegmentation = node.GetSegmentation() if node is not None else None
        if self._observedSegmentation is not None:
            for event in self._segmentEvents():
                self.addObserver(self._observedSegmentation, event, self._updateLiverSegmentList)
        self._updateLiverSegmentList()

    def _updateLiverSegmentList(self, caller=None, event=None) -> None:
        """Fill the segment list; select the segment kept in the parameter node, else one named 'Liver'."""
        combo = self.ui.liverSegmentComboBox
        segmentation = self._observedSegmentation
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            combo.enabled = segmentation is not None
            if segmentation is None:
                return
            for index in range(segmentation.GetNumberOfSegments()):
                combo.addItem(segmentation.GetNthSegment(index).GetName(), segmentation.GetNthSegmentID(index))
            chosen = self._parameterNode.liverSegmentId if self._parameterNode else ""
            index = combo.findData(chosen) if chosen else -1
            combo.currentIndex = index if index >= 0 else max(combo.findText("Liver"), 0)
        finally:
            combo.blockSignals(wasBlocked)
        self._onLiverSegmentChosen(combo.currentIndex)

    def _onLiverSegmentChosen(self, index: int) -> None:
        """Keep the chosen segment's ID in the parameter node (saved with the scene)."""
        if self._parameterNode is not None:
            combo = self.ui.liverSegmentComboBox
            segmentId = combo.itemData(index) if 0 <= index < combo.count else None
            self._parameterNode.liverSegmentId = segmentId or ""

    def _onWeightsPathChanged(self, path: str) -> None:
        """Keep the classifier weights path in the parameter node (saved with the scene)."""
        if self._parameterNode is not None:
            self._parameterNode.weightsPath = path.strip()

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        reason = self.logic.inputProblem(p.inputVolume if p else None, p.landmarks if p else None)
        self.ui.applyButton.enabled = reason is None and not self._running
        self.ui.proposeLandmarksButton.enabled = bool(p and p.inputVolume) and not self._running
        self.ui.applyButton.toolTip = reason or _("Run denoising, tissue segmentation, Couinaud mapping and classification.")
        self.ui.medianRadiusSliderWidget.enabled = bool(self._parameterNode and self._parameterNode.denoiseMethod == "median")

    # ---------------------------------------------------------------- running

    def _options(self):
        from LiverLocalizationLib.pipeline import PipelineOptions

        p = self._parameterNode
        weights = p.weightsPath.strip()
        return PipelineOptions(
            denoise_method=p.denoiseMethod, median_radius_mm=float(p.medianRadiusMm),
            n_classes=int(p.nClasses) or None, min_lesion_volume_mm3=float(p.minLesionVolumeMm3),
            lesion_false_alarms=float(p.lesionFalseAlarms),
            couinaud_method=p.couinaudMethod, couinaud_segments=9 if p.couinaudNineSegments else 8, classify=bool(p.classify), weights_path=weights or None)

    def onApplyButton(self) -> None:
        """Start the pipeline in a worker process on the selected nodes; a timer shows its progress, Cancel ends it."""
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Liver localization failed."), waitCursor=True):
            liverSegmentId = (p.liverSegmentId or None) if p.liverSegmentation else None
            if not self.logic.ensureDependencies(liverMaskGiven=liverSegmentId is not None, classify=bool(p.classify),
                                                 askConfirmation=True):
                self.ui.statusLabel.text = _("This run needs Python packages that are not installed: install them, or "
                                             "give a liver segmentation / untick Classify.")
                return
            self._run = self.logic.startProcessing(
                p.inputVolume, p.landmarks, p.liverSegmentation, liverSegmentId, options=self._options(),
                outputs=self._outputNodes(), lesionPoints=p.lesionPoints)
            self._setRunning(True)
            self.ui.statusLabel.text = _("Starting...")
            self._pollTimer.start()

    def _outputNodes(self) -> dict:
        p = self._parameterNode
        return {"segmentation": p.outputSegmentation, "table": p.outputTable, "denoised": p.denoisedVolume,
                "gradcam": p.gradcamVolume}

    def _onPollRun(self) -> None:
        """Timer tick while a run works: show its progress; when it has ended, bring its results into the scene."""
        run = self._run
        if run is None:
            self._pollTimer.stop()
            return
        for fraction, message in run.poll():
            self.ui.progressBar.value = int(round(100 * 0.95 * fraction))
            self.ui.statusLabel.text = message
        if run.running():
            return
        self._pollTimer.stop()
        self._run = None
        from LiverLocalizationLib.pipeline import Cancelled

        try:
            with slicer.util.tryWithErrorDisplay(_("Liver localization failed."), waitCursor=True):
                try:
                    outputs = self.logic.finishProcessing(run, outputs=self._outputNodes())
                except Cancelled:
                    self.ui.statusLabel.text = _("Cancelled; no results were written.")
                    return
                p = self._parameterNode
                p.outputSegmentation = outputs.segmentation
                p.outputTable = outputs.table
                p.denoisedVolume = outputs.denoised
                if outputs.gradcam is not None:
                    p.gradcamVolume = outputs.gradcam
                self._showResults(outputs)
        finally:
            self._setRunning(False)

    def _setRunning(self, running: bool) -> None:
        """While a run works the inputs, settings and Apply are disabled (the run reads copies of the inputs, and its
        results go to the output nodes chosen at Apply); Cancel is enabled."""
        self._running = running
        self.ui.cancelButton.enabled = running
        self.ui.progressBar.setVisible(running)
        self.ui.progressBar.value = 0
        for section in ("inputsCollapsibleButton", "landmarksCollapsibleButton", "denoisingCollapsibleButton",
                        "couinaudCollapsibleButton", "classificationCollapsibleButton", "advancedCollapsibleButton",
                        "outputsCollapsibleButton"):
            getattr(self.ui, section).enabled = not running
        self._checkCanApply()

    def onCancelButton(self) -> None:
        """End the worker process (within about a second); nothing is written to the scene."""
        if self._run is not None:
            self._run.cancel()
            self.ui.statusLabel.text = _("Cancelling...")

    def _showResults(self, outputs) -> None:
        result = outputs.result
        from LiverLocalizationLib import pipeline

        self.ui.resultsCollapsibleButton.collapsed = False
        self.ui.lesionTableView.setMRMLTableNode(outputs.table)
        text = pipeline.summary_text(result).replace("\n", "<br>") + "<br>" + _("Double-click a table row to show that lesion.")
        for warning in outputs.warnings:
            if warning not in result.warnings:
                text += "<br>" + _("Note: {warning}").format(warning=warning)
        self.ui.resultsSummaryLabel.text = text
        self.ui.statusLabel.text = _("Done.")
        slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume, fit=True)
        self.ui.showCouinaudButton.enabled = result.couinaud is not None
        self.ui.showGradCamButton.enabled = outputs.gradcam is not None
        self.ui.showCouinaudButton.checked = result.couinaud is not None
        self.ui.showLesionsButton.checked = True
        self.onShowCouinaud(self.ui.showCouinaudButton.checked)

    # ---------------------------------------------------------------- result display

    def onLesionDoubleClicked(self, index) -> None:
        """Centre the slice views on the lesion of the double-clicked table row."""
        if not self.logic.jumpToLesion(self._parameterNode.outputTable, index.row()):
            self.ui.statusLabel.text = _("This row has no lesion position.")

    def onShowCouinaud(self, show: bool) -> None:
        self.logic.setSegmentsVisible(self._parameterNode.outputSegmentation, "couinaud_", show)

    def onShowLesions(self, show: bool) -> None:
        self.logic.setSegmentsVisible(self._parameterNode.outputSegmentation, "lesion_", show)

    def onShowGradCam(self, show: bool) -> None:
        gradcam = self._parameterNode.gradcamVolume
        if gradcam is None:
            return
        slicer.util.setSliceViewerLayers(foreground=gradcam if show else None, foregroundOpacity=0.45 if show else 0.0)

    def onCompareDenoised(self, show: bool) -> None:
        """Before/after: the denoised volume in the foreground over the input (fade with the slice-view slider)."""
        denoised = self._parameterNode.denoisedVolume
        if denoised is None:
            self.ui.statusLabel.text = _("Run the module first: the denoised volume does not exist yet.")
            return
        slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume,
                                         foreground=denoised if show else None, foregroundOpacity=0.5 if show else 0.0)

    def onInstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Installing packages failed."), waitCursor=True):
            ok = self.logic.ensureDependencies(liverMaskGiven=False, classify=True, askConfirmation=True)
            self.ui.dependenciesStatusLabel.text = _("All packages are installed.") if ok else _("Some packages are missing.")


#
# LiverLocalizationLogic
#


class LiverLocalizationLogic(ScriptedLoadableModuleLogic):
    """Usable without the GUI (Python console, scripts); everything computes in LiverLocalizationLib.

    Coordinates: nodes are in RAS (Slicer); the library works in LPS millimetres; conversions are in
    LiverLocalizationLib.mrml. Input nodes are never modified.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return LiverLocalizationParameterNode(super().getParameterNode())

    @staticmethod
    def inputProblem(inputVolume, landmarks=None) -> str | None:
        """Why Apply cannot run with these inputs (None when it can): no CT, or only some required landmarks."""
        if inputVolume is None:
            return _("Select the CT volume.")
        if inputVolume.GetImageData() is None:
            return _("The selected volume has no voxels.")
        if landmarks is not None:
            from LiverLocalizationLib import mrml

            status = mrml.landmark_status(landmarks)
            missing = [n for n in labels.REQUIRED_LANDMARKS if not status[n]]
            if 0 < len(missing) < len(labels.REQUIRED_LANDMARKS):
                return _("Place the landmarks {names} (or select no point list to run without Couinaud segments).").format(
                    names=", ".join(missing))
        return None

    def process(self, inputVolume: vtkMRMLScalarVolumeNode, landmarks: vtkMRMLMarkupsFiducialNode | None = None,
            liverSegmentation: vtkMRMLSegmentationNode | None = None, liverSegmentId: str | None = None,
            options=None, outputs: dict | None = None, progress=None, shouldCancel=None,
            lesionPoints: vtkMRMLMarkupsFiducialNode | None = None):
        """Run the whole pipeline on scene nodes.

        :param inputVolume: CT in Hounsfield units (any spacing and orientation).
        :param landmarks: point list with control points labelled IVC, IVC_inferior, RHV, MHV, LHV, RPV, LPV, UP
            (RAS, world); None: no Couinaud segments.
        :param liverSegmentation: optional segmentation with a liver mask; liverSegmentId picks the segment.
        :param lesionPoints: optional point list (RAS, world) of clicks inside lesions the detection may miss; each
            gives its lesion (table column 'source': 'clicked'); a click inside a detected lesion keeps it.
        :param options: LiverLocalizationLib.pipeline.PipelineOptions (defaults when None).
        :param outputs: output nodes to reuse, keys 'segmentation', 'table', 'denoised', 'gradcam'.
        :param progress: callback(fraction 0..1, message); shouldCancel: callable polled between stages.
        :return: LiverLocalizationLib.mrml.NodeOutputs: output nodes ``segmentation``, ``table``, ``denoised``,
            ``gradcam`` (None without classification), ``result`` (PipelineResult, images in LPS) and ``warnings``.
        :raises ValueError: (InputError) on bad input, with a message saying what to do.
        """
        from LiverLocalizationLib import mrml

        problem = self.inputProblem(inputVolume, landmarks)
        if problem:
            raise ValueError(problem)
        return mrml.run_on_nodes(inputVolume, landmarks, liverSegmentation, liverSegmentId, options=options,
                                 outputs=outputs, progress=progress, should_cancel=shouldCancel,
                                 lesion_points_node=lesionPoints)

    def startProcessing(self, inputVolume: vtkMRMLScalarVolumeNode, landmarks: vtkMRMLMarkupsFiducialNode | None = None,
                        liverSegmentation: vtkMRMLSegmentationNode | None = None, liverSegmentId: str | None = None,
                        options=None, outputs: dict | None = None,
                        lesionPoints: vtkMRMLMarkupsFiducialNode | None = None):
        """Start the pipeline in a worker process (Slicer's PythonSlicer) and return at once, so that the GUI stays
        responsive: the inputs (the same as `process`'s) are read and copied to a job folder in Slicer's temporary
        directory now, so changing or deleting the nodes afterwards does not change the run.

        :return: LiverLocalizationLib.background.BackgroundRun: ``poll()`` gives (fraction, message) progress
            reports, ``running()`` whether it works, ``cancel()`` ends it within about a second; pass it to
            `finishProcessing` when it has ended.
        :raises ValueError: (InputError) on bad input, before anything starts.
        """
        import shutil
        import tempfile

        from LiverLocalizationLib import background, mrml

        problem = self.inputProblem(inputVolume, landmarks)
        if problem:
            raise ValueError(problem)
        inputs = mrml.read_run_inputs(inputVolume, landmarks, liverSegmentation, liverSegmentId, options, outputs,
                                      lesionPoints)
        app = getattr(slicer, "app", None)  # None on a headless slicer-core scene (scripts, CI)
        python = shutil.which("PythonSlicer")  # Slicer's Python interpreter, beside the application
        if python is None and app is not None:
            raise RuntimeError("PythonSlicer (Slicer's Python interpreter) was not found on the PATH; the run needs it "
                               "to work in the background. Reinstall Slicer, or run logic.process(...) from the console.")
        root = os.path.join(app.temporaryPath if app is not None else tempfile.gettempdir(), "LiverLocalization")
        os.makedirs(root, exist_ok=True)
        job = tempfile.mkdtemp(prefix="run-", dir=root)
        try:
            background.write_job(job, inputs.ct, inputs.landmarks, inputs.liver_mask, inputs.options)
            run = background.BackgroundRun.start(job, python=python)  # headless (no application): this interpreter
        except BaseException:
            shutil.rmtree(job, ignore_errors=True)  # a copy of the CT is not left behind in the temporary folder
            raise
        run.inputVolume, run.ct = inputVolume, inputs.ct
        return run

    def finishProcessing(self, run, outputs: dict | None = None):
        """Bring an ended background run's results into the scene (see `process` for `outputs` and the return value)
        and remove its job folder.

        :raises LiverLocalizationLib.pipeline.Cancelled: the run was cancelled; nothing is written.
        :raises ValueError: (InputError) bad input found by the run, or the input volume was deleted meanwhile.
        :raises RuntimeError: the run failed otherwise; the message holds the end of its log.
        """
        import shutil

        from LiverLocalizationLib import mrml

        try:
            result = run.result(run.ct)
            return mrml.write_run_outputs(result, run.inputVolume, outputs)
        finally:
            shutil.rmtree(run.job_dir, ignore_errors=True)

    @staticmethod
    def landmarkStatus(markupsNode) -> dict[str, bool]:
        """Landmark name -> placed (a defined control point with that label exists)."""
        from LiverLocalizationLib import mrml

        return mrml.landmark_status(markupsNode)

    @staticmethod
    def proposeLandmarks(volumeNode, liverSegmentation=None, liverSegmentId: str = "", landmarksNode=None):
        """Propose the vessel landmarks from the CT (LiverLocalizationLib.landmarks.propose_landmarks) for the user
        to confirm, move or delete.

        :param volumeNode: CT in Hounsfield units (any spacing and orientation).
        :param liverSegmentation: optional segmentation with a liver mask; liverSegmentId picks the segment (without
            one the liver is found automatically, which needs scikit-image).
        :param landmarksNode: a point list to fill only when it is empty; one holding points is never overwritten
            (a new node is made instead).
        :return: (markupsNode, missing): the point list with one control point per landmark found (labelled IVC,
            RHV, ...; RAS world coordinates, converted from the library's LPS millimetres in
            LiverLocalizationLib.mrml; description 'proposed, confidence C: reason'; unlocked), and a dict
            landmark name -> why it was not proposed.
        :raises ValueError: (InputError) no volume, or a liver segmentation without a chosen segment.
        """
        from LiverLocalizationLib import mrml

        node, proposed = mrml.propose_landmarks_on_nodes(volumeNode, liverSegmentation, liverSegmentId or None,
                                                         landmarksNode)
        return node, dict(proposed.missing)

    @staticmethod
    def startLandmarkPlacement(markupsNode, name: str) -> int:
        """Switch to place mode so that the next click sets the control point labelled `name` (created if needed)."""
        from LiverLocalizationLib import mrml

        return mrml.start_landmark_placement(markupsNode, name)

    @staticmethod
    def startLesionPointPlacement(markupsNode) -> int:
        """Switch to place mode so that the next click adds a point inside a lesion (labelled 'lesion N')."""
        from LiverLocalizationLib import mrml

        return mrml.start_point_placement(markupsNode, f"lesion {markupsNode.GetNumberOfControlPoints() + 1}")

    @staticmethod
    def setSegmentsVisible(segmentationNode, idPrefix: str, visible: bool) -> None:
        """Show or hide the output segments whose result ID starts with idPrefix ('couinaud_', 'lesion_')."""
        from LiverLocalizationLib import mrml

        mrml.set_generated_segments_visible(segmentationNode, idPrefix, visible)

    @staticmethod
    def jumpToLesion(tableNode, row: int) -> bool:
        """Centre the slice views on the centroid (RAS mm) of a lesion table row; False when the row has none."""
        from LiverLocalizationLib import mrml

        centroid = mrml.table_row_centroid_ras(tableNode, row)
        if centroid is None:
            return False
        mrml.jump_slices_to(centroid)
        return True

    @staticmethod
    def missingPackages(liverMaskGiven: bool, classify: bool) -> list:
        """The optional packages (`dependencies.OptionalPackage`) a run with these settings needs and lacks: the
        liver extraction's scikit-image (not when a liver mask is given), the classifier's safetensors and torch."""
        from LiverLocalizationLib import dependencies

        return dependencies.missing(dependencies.packages_for_run(liverMaskGiven, classify))

    def ensureDependencies(self, liverMaskGiven: bool, classify: bool, askConfirmation: bool = True) -> bool:
        """Install what a run needs after the user agrees (pip for the packages, the PyTorch extension for torch).

        :return: True when every package the run needs is importable afterwards.
        """
        from LiverLocalizationLib import dependencies

        absent = self.missingPackages(liverMaskGiven, classify)
        pipPackages = [p for p in absent if p is not dependencies.TORCH]
        if pipPackages:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    _("This run needs these Python packages: {names}. Install them now?").format(
                        names=", ".join(f"{p.module} ({p.purpose})" for p in pipPackages))):
                return False
            slicer.util.pip_install([p.requirement for p in pipPackages])
        if dependencies.TORCH in absent:
            try:
                import PyTorchUtils
            except ImportError:
                logging.warning("The PyTorch extension is not installed; install it from the Extensions Manager.")
                return False
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled() and torchLogic.installTorch(askConfirmation=askConfirmation) is None:
                return False
        return not self.missingPackages(liverMaskGiven, classify)

    def loadPhantomSample(self, seed: int = 7, size: str = "small"):
        """Generate the synthetic phantom (a few seconds, nothing downloaded) and load it.

        :return: (CT volume node, landmarks point-list node, Phantom with the ground truth in LPS).
        """
        from LiverLocalizationLib import mrml
        from LiverLocalizationLib.phantom import generate_phantom

        phantom = generate_phantom(seed=seed, size=size)
        volume = mrml.image_to_volume_node(phantom.ct, SAMPLE_NAME)
        landmarks = mrml.landmarks_to_markups(phantom.landmarks, f"{SAMPLE_NAME} landmarks")
        displayNode = volume.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetAutoWindowLevel(False)
            displayNode.SetWindowLevel(350, 60)
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        return volume, landmarks, phantom


#
# LiverLocalizationTest
#


class LiverLocalizationTest(ScriptedLoadableModuleTest):
    """End-to-end self-test on the phantom sample: landmarks placed, logic run, results checked against truth."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LiverLocalization_phantom()

    def test_LiverLocalization_phantom(self):
        import numpy as np
        import SimpleITK as sitk
        from LiverLocalizationLib import metrics, mrml
        from LiverLocalizationLib.pipeline import PipelineOptions

        self.delayDisplay("Generating the phantom sample")
        logic = LiverLocalizationLogic()
        if not logic.ensureDependencies(liverMaskGiven=False, classify=False, askConfirmation=True):
            self.skipTest("the liver extraction needs scikit-image, which is not installed")
        volume, landmarks, phantom = logic.loadPhantomSample(seed=7)
        self.assertEqual(set(logic.landmarkStatus(landmarks).values()), {True})

        self.delayDisplay("Running the pipeline in a worker process, as Apply does")
        import time

        run = logic.startProcessing(volume, landmarks, options=PipelineOptions(classify=False))
        reports = []
        while run.running():
            reports += run.poll()
            time.sleep(0.2)
        reports += run.poll()
        self.assertGreater(len(reports), 3)
        background = logic.finishProcessing(run)

        self.delayDisplay("Running the pipeline in this process, as the Python console does")
        outputs = logic.process(volume, landmarks, options=PipelineOptions(classify=False))
        self.assertEqual([row["id"] for row in background.result.lesions], [row["id"] for row in outputs.result.lesions])
        self.assertEqual(mrml.segment_to_array(background.segmentation, "liver", volume).sum(),
                         mrml.segment_to_array(outputs.segmentation, "liver", volume).sum())
        segmentation = outputs.segmentation
        liver = mrml.segment_to_array(segmentation, "liver", volume)
        truthCouinaud = sitk.GetArrayViewFromImage(phantom.truth_couinaud)
        self.assertGreater(metrics.dice(liver, truthCouinaud > 0), 0.85)
        result = outputs.result
        self.assertIsNotNone(result.couinaud)
        dices = [metrics.dice(mrml.segment_to_array(segmentation, f"couinaud_{roman}", volume), truthCouinaud == value)
                 for value, roman in labels.COUINAUD_ROMAN.items()]
        self.assertGreater(float(np.mean(dices)), 0.6)
        # lesions matched to a true lesion are located in its Couinaud segment (at least half of them)
        match = metrics.match_instances(result.lesion_labels, phantom.truth_lesions)
        truthRows = {row["id"]: row for row in phantom.lesions}
        foundRows = {row["id"]: row for row in result.lesions}
        located = [foundRows[a]["main_segment"] == truthRows[b]["main_segment"] for a, b, _ in match["pairs"]]
        self.assertTrue(located)
        self.assertGreaterEqual(float(np.mean(located)), 0.5)
        self.assertEqual(outputs.table.GetNumberOfRows(), len(result.lesions))
        self.delayDisplay("Test passed")
