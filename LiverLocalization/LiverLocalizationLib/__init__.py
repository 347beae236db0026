"""LiverLocalizationLib: liver tumour detection and Couinaud-segment localization on CT.

The headless core of the LiverLocalization 3D Slicer extension. Algorithms work on SimpleITK
images with physical geometry; nothing here imports ``slicer`` or ``qt`` except ``mrml``.
"""

__version__ = "0.1.0"
