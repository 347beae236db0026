"""Label values, segment names, colours and SNOMED CT codes used by every label map and report.

Codes follow domain.md §3 (SNOMED CT, as used by Slicer's terminologies).
"""

from __future__ import annotations

from dataclasses import dataclass

# Tissue label map written by the pipeline (tissue.nii.gz)
BACKGROUND = 0
PARENCHYMA = 1
LESION = 2
VESSEL = 3
TISSUE_NAMES = {BACKGROUND: "background", PARENCHYMA: "liver parenchyma", LESION: "lesion", VESSEL: "vessel"}

# Ground-truth tissue label map of the phantom (truth_tissue.nii.gz)
TRUTH_PARENCHYMA = 1
TRUTH_LESION = 2
TRUTH_HEPATIC_VEIN = 3
TRUTH_PORTAL_VEIN = 4
TRUTH_IVC = 5
# the liver as the references count it: parenchyma, lesions and intrahepatic veins (the IVC is not liver)
TRUTH_LIVER = (TRUTH_PARENCHYMA, TRUTH_LESION, TRUTH_HEPATIC_VEIN, TRUTH_PORTAL_VEIN)
# the intrahepatic vessels (hepatic and portal veins), what the vessel class and a vessel segmentation stand for
TRUTH_INTRAHEPATIC_VESSELS = (TRUTH_HEPATIC_VEIN, TRUTH_PORTAL_VEIN)

# Couinaud segments: label value k (1..8) is segment ROMAN[k]
COUINAUD_ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI", 7: "VII", 8: "VIII"}
COUINAUD_LABELS = tuple(COUINAUD_ROMAN)
# The nine-segment output (`--segments 9`, what surgical planning asks for): IV split at the left portal plane into
# IVa (superior) and IVb (inferior). IVa keeps IV's label 4 and IVb takes label 9, so every other label means the
# same in both outputs and mapping 9 to 4 gives the eight-segment map back (the references, 3D-IRCADb and LiTS,
# merge IVa/IVb into 4). Keys in anatomical order: I, II, III, IVa, IVb, V..VIII.
SEGMENT_COUNTS = (8, 9)
COUINAUD_IVA = 4
COUINAUD_IVB = 9
COUINAUD9_ROMAN = {1: "I", 2: "II", 3: "III", COUINAUD_IVA: "IVa", COUINAUD_IVB: "IVb", 5: "V", 6: "VI", 7: "VII",
                   8: "VIII"}


def check_segment_count(segments) -> int:
    """The number of Couinaud segments asked for (8 or 9) as an int; InputError naming the choices otherwise."""
    if isinstance(segments, bool) or segments not in SEGMENT_COUNTS:
        from .errors import InputError  # here: the Slicer module imports this file at load, standard library only

        raise InputError(f"{segments!r} Couinaud segments: choose 8 (I-VIII) or 9 (IV split into IVa and IVb).")
    return int(segments)


def couinaud_names(segments: int = 8) -> dict[int, str]:
    """Label value → segment name ("I".."VIII", or with IVa/IVb for 9 segments), in anatomical order."""
    return dict(COUINAUD9_ROMAN if check_segment_count(segments) == 9 else COUINAUD_ROMAN)


def eight_segment_name(name: str) -> str:
    """The eight-segment name of a segment name: IVa and IVb are IV, the others unchanged."""
    return "IV" if name in ("IVa", "IVb") else name

# Landmark names (Slicer markups control-point labels), domain.md §1
LANDMARK_NAMES = ("IVC", "IVC_inferior", "RHV", "MHV", "LHV", "RPV", "LPV", "UP")
REQUIRED_LANDMARKS = ("IVC", "RHV", "MHV", "LHV", "RPV", "LPV")
OPTIONAL_LANDMARKS = ("IVC_inferior", "UP")
HEPATIC_VEIN_LANDMARKS = ("RHV", "MHV", "LHV")
PORTAL_VEIN_LANDMARKS = ("RPV", "LPV", "UP")
# Where each landmark goes (messages that ask the user to place one say "place RHV <this>"), domain.md §1
LANDMARK_PLACES = {
    "IVC": "on the inferior vena cava where the hepatic veins join it (hepatic-vein confluence, top of the liver)",
    "IVC_inferior": "on the inferior vena cava at the lower end of the caudate lobe (segment I)",
    "RHV": "on the right hepatic vein, 2-4 cm from the IVC",
    "MHV": "on the middle hepatic vein, 2-4 cm from the IVC (Cantlie's line)",
    "LHV": "on the left hepatic vein, 2-4 cm from the IVC",
    "RPV": "on the right portal vein at the portal bifurcation",
    "LPV": "on the left portal vein at the portal bifurcation",
    "UP": "on the umbilical portion of the left portal vein (falciform ligament)",
}
# What each landmark decides ("it <this>")
LANDMARK_ROLES = {
    "IVC": "sets the axis the hepatic-vein planes turn about",
    "IVC_inferior": "checks that the landmarks follow the IVC (and tilts the axis with axis='ivc')",
    "RHV": "splits right posterior (VI, VII) from right anterior (V, VIII)",
    "MHV": "splits the right liver (V, VIII) from IV",
    "LHV": "splits IV from the left lateral segments II and III",
    "RPV": "sets the height that splits VII, VIII from VI, V (with LPV: the bifurcation, where segment I ends)",
    "LPV": "sets the height that splits II from III (with RPV: the bifurcation, where segment I ends)",
    "UP": "sets the lower border of IV with III",
}
# Shown next to each landmark's placement button in the Slicer module and stored in the markups
LANDMARK_DESCRIPTIONS = {
    name: ("Optional: place it " if name in OPTIONAL_LANDMARKS else "Place it ") + f"{LANDMARK_PLACES[name]}; it "
    + LANDMARK_ROLES[name] + "."
    for name in LANDMARK_NAMES
}

# Lesion kinds the classifier knows
LESION_KINDS = ("cyst", "haemangioma", "metastasis", "hcc")
MALIGNANT_KINDS = frozenset({"metastasis", "hcc"})


@dataclass(frozen=True)
class Code:
    """A coded concept: (coding scheme, code value, code meaning)."""

    scheme: str
    value: str
    meaning: str


ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("SCT", "49755003", "Morphologically Altered Structure")


@dataclass(frozen=True)
class SegmentStyle:
    """How a structure appears as a Slicer segment: name, colour (0..1 RGB) and terminology.

    modifier: the terminology's type modifier (e.g. Superior for IVa), None when the type needs none.
    """

    name: str
    color: tuple[float, float, float]
    category: Code
    type: Code
    modifier: Code | None = None


def _sct(value: str, meaning: str) -> Code:
    return Code("SCT", value, meaning)


LIVER = SegmentStyle("Liver", (0.87, 0.51, 0.38), ANATOMICAL_STRUCTURE, _sct("10200004", "Liver"))
VESSELS = SegmentStyle("Liver vessels", (0.05, 0.05, 0.50), ANATOMICAL_STRUCTURE, _sct("32764006", "Portal vein"))
PORTAL_VEIN = SegmentStyle("Portal vein", (0.05, 0.05, 0.50), ANATOMICAL_STRUCTURE, _sct("32764006", "Portal vein"))
HEPATIC_VEIN = SegmentStyle("Hepatic vein", (0.25, 0.25, 0.70), ANATOMICAL_STRUCTURE, _sct("8993003", "Hepatic vein"))
IVC = SegmentStyle("Inferior vena cava", (0.0, 0.0, 0.30), ANATOMICAL_STRUCTURE, _sct("64131007", "Inferior vena cava"))
LESION_STYLE = SegmentStyle("Lesion", (1.0, 1.0, 1.0), MORPHOLOGICALLY_ALTERED_STRUCTURE, _sct("52988006", "Lesion"))
NEOPLASM_STYLE = SegmentStyle("Neoplasm", (1.0, 0.0, 1.0), MORPHOLOGICALLY_ALTERED_STRUCTURE, _sct("108369006", "Neoplasm"))
CYST_STYLE = SegmentStyle("Cyst", (0.0, 1.0, 1.0), MORPHOLOGICALLY_ALTERED_STRUCTURE, _sct("441457006", "Cyst"))

# Couinaud segments with distinct colours (a qualitative palette readable on CT). Lesions (white, magenta, cyan)
# and vessels (navy) use colours outside this palette so they stay distinguishable when overlaid on the segments.
COUINAUD_STYLES = {
    1: SegmentStyle("Couinaud I", (0.65, 0.34, 0.16), ANATOMICAL_STRUCTURE, _sct("71133005", "Caudate lobe of liver")),
    2: SegmentStyle("Couinaud II", (0.89, 0.10, 0.11), ANATOMICAL_STRUCTURE, _sct("277956007", "Hepatic segment II")),
    3: SegmentStyle("Couinaud III", (0.22, 0.49, 0.72), ANATOMICAL_STRUCTURE, _sct("277957003", "Hepatic segment III")),
    4: SegmentStyle("Couinaud IV", (0.30, 0.69, 0.29), ANATOMICAL_STRUCTURE, _sct("277958008", "Hepatic segment IV")),
    5: SegmentStyle("Couinaud V", (0.60, 0.31, 0.64), ANATOMICAL_STRUCTURE, _sct("277959000", "Hepatic segment V")),
    6: SegmentStyle("Couinaud VI", (1.00, 0.50, 0.00), ANATOMICAL_STRUCTURE, _sct("277960005", "Hepatic segment VI")),
    7: SegmentStyle("Couinaud VII", (1.00, 1.00, 0.20), ANATOMICAL_STRUCTURE, _sct("277961009", "Hepatic segment VII")),
    8: SegmentStyle("Couinaud VIII", (0.97, 0.51, 0.75), ANATOMICAL_STRUCTURE, _sct("277962002", "Hepatic segment VIII")),
}
# IVa and IVb have no SNOMED CT code of their own in domain.md §3: they are coded as Hepatic segment IV with the type
# modifier Superior / Inferior (SNOMED CT qualifier values, DICOM CID 2 anatomic modifiers), as Slicer's
# terminologies code left/right structures. IVa keeps IV's green, IVb a light green (outside the other colours).
SUPERIOR = _sct("264217000", "Superior")
INFERIOR = _sct("261089000", "Inferior")
COUINAUD_IVA_STYLE = SegmentStyle("Couinaud IVa", COUINAUD_STYLES[4].color, ANATOMICAL_STRUCTURE, COUINAUD_STYLES[4].type,
                                  SUPERIOR)
COUINAUD_IVB_STYLE = SegmentStyle("Couinaud IVb", (0.70, 0.87, 0.54), ANATOMICAL_STRUCTURE, COUINAUD_STYLES[4].type,
                                  INFERIOR)


def couinaud_styles(segments: int = 8) -> dict[int, SegmentStyle]:
    """Label value → segment style of the eight- or nine-segment output, in anatomical order (`couinaud_names`)."""
    if check_segment_count(segments) == 8:
        return dict(COUINAUD_STYLES)
    nine = {COUINAUD_IVA: COUINAUD_IVA_STYLE, COUINAUD_IVB: COUINAUD_IVB_STYLE}
    return {k: nine.get(k, COUINAUD_STYLES.get(k)) for k in couinaud_names(9)}


def lesion_style(kind: str | None) -> SegmentStyle:
    """Segment style for a lesion of a classified kind (None: not classified)."""
    if kind == "cyst":
        return CYST_STYLE
    if kind in MALIGNANT_KINDS:
        return NEOPLASM_STYLE
    return LESION_STYLE
