"""Synthetic portal-venous liver CT phantom with ground truth.

The anatomy is a set of continuous functions of position, defined in a *canonical* patient frame
(LPS millimetres for an average adult, origin near the portal bifurcation) and mapped to the
physical frame by ``p = centre + scale * q``. Every voxel of the output grid is evaluated at its own
physical position, so the ``small`` and ``full`` sizes and the oblique / flipped storage variants show the
same anatomy for one seed, and ground truth and landmarks are in true physical LPS space.

What is modelled (portal-venous phase, domain.md §2): air, skin and subcutaneous fat, abdominal wall
muscle, ribs and spine, paraspinal and psoas muscles, lung bases above a two-domed diaphragm, heart,
aorta, IVC, spleen, both kidneys (cortex and medulla), stomach (wall, fluid, air), pancreas, colon,
gallbladder, bowel loops in mesenteric fat, and the liver: a dome-shaped right lobe, a tapering left
lobe and a caudate lobe wrapped around the IVC, shaped by seed, 1200-2200 ml, with hepatic veins (RHV,
MHV, LHV, with tributaries) draining into the IVC and a portal tree (trunk, RPV with anterior and
posterior sectoral branches, LPV with its umbilical portion, segmental branches).

Couinaud ground truth is built from the vessel geometry: the sectoral borders are curved surfaces
(ruled through the IVC axis) on which the generated hepatic veins run; the superior/inferior border is
a curved surface through the portal bifurcation; segment I is the caudate lobe between the IVC and the
bifurcation. Border offsets are calibrated per seed on a coarse grid so that segment volume fractions
fall near the 3D-IRCADb reference.

Lesions (cyst, haemangioma, metastasis, HCC) are perturbed ellipsoids with kind-specific enhancement
patterns, as varied as real ones: 5-70 mm, faint large masses, necrotic and septate interiors, calcifications
or lipiodol inside or at the edge, clusters of touching metastases, lesions at the surface (some bulging out
of the liver), next to vessels. Every enhancing tissue follows the scan's enhancement factor; a quarter of
the scans have a parenchyma of only 60-80 HU, with strong noise. The image is blurred (partial volume and scanner PSF) and gets
correlated noise scaled to the requested sigma in homogeneous tissue.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import labels
from .checksums import file_sha256
from .errors import InputError
from .geometry import lps_to_ras, zip_equal

Progress = Callable[[float, str], None]

REFERENCE_COUINAUD_FRACTIONS = {1: 0.031, 2: 0.127, 3: 0.065, 4: 0.151, 5: 0.149, 6: 0.096, 7: 0.155, 8: 0.227}
KIND_DIAMETER_MM = {"cyst": (5.0, 40.0), "haemangioma": (8.0, 50.0), "metastasis": (8.0, 65.0), "hcc": (15.0, 70.0)}
SIZES = ("small", "full")
_COARSE_MM = 3.0  # canonical grid step for calibration and placement
UP_RADIUS = 62.0  # canonical distance (mm) of the umbilical portion's origin from the IVC axis


@dataclass
class Phantom:
    """A generated case: CT, ground truth label maps (CT geometry), lesion table and landmarks (LPS mm).

    ct: int16 HU, blurred and noisy (what a scanner gives). ct_clean: float32 HU, blurred, noise-free.
    truth_tissue: uint8, labels.TRUTH_* (0 background, 1 parenchyma, 2 lesion, 3 hepatic vein,
        4 portal vein, 5 IVC); vessels are labelled wherever they run, inside the liver or not.
    truth_couinaud: uint8 0 or 1..8 over the whole liver, lesions and intrahepatic vessels included
        (the IVC and the extrahepatic portal trunk excluded).
    truth_lesions: uint16 instance ids 1..n (voxels of labels.TRUTH_LESION).
    lesions: one dict per lesion id: id, kind, malignant, volume_ml, diameter_mm (equivalent sphere),
        centroid_ras (mm), couinaud_fractions ({"I": .., "VIII": ..}, sum 1), main_segment ("VII").
    landmarks: labels.LANDMARK_NAMES → LPS mm, each inside its vessel's truth voxels.
    liver_volume_ml: volume of truth_couinaud > 0. info: scale, Couinaud fractions, variant flags, HU values.
    """

    ct: sitk.Image
    ct_clean: sitk.Image
    truth_tissue: sitk.Image
    truth_couinaud: sitk.Image
    truth_lesions: sitk.Image
    lesions: list[dict]
    landmarks: dict[str, np.ndarray]
    seed: int
    size: str
    liver_volume_ml: float
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- small maths helpers

def _smin(a, b, k):
    """Smooth minimum (polynomial), blending width k (mm)."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _smax(a, b, k):
    return -_smin(-a, -b, k)


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation matrix from angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def _ellipsoid_k(X, Y, Z, centre, radii, rot=None):
    """Normalised ellipsoid radius (1 on the surface) at canonical points; rot maps local to canonical axes."""
    dx, dy, dz = X - centre[0], Y - centre[1], Z - centre[2]
    if rot is not None:
        r = rot.T
        dx, dy, dz = (r[0, 0] * dx + r[0, 1] * dy + r[0, 2] * dz, r[1, 0] * dx + r[1, 1] * dy + r[1, 2] * dz,
                      r[2, 0] * dx + r[2, 1] * dy + r[2, 2] * dz)
    return np.sqrt((dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2)


def _ellipsoid_sd(X, Y, Z, centre, radii, rot=None):
    """Approximate signed distance (mm, negative inside) to an ellipsoid."""
    return (_ellipsoid_k(X, Y, Z, centre, radii, rot) - 1.0) * float(min(radii))


def _waves(X, Y, Z, waves):
    """Sum of plane waves: a smooth random field. waves: (n, 5) rows [kx, ky, kz, phase, amplitude]."""
    out = 0.0
    for kx, ky, kz, ph, amp in waves:
        arg = ph
        if kx:
            arg = arg + kx * X
        if ky:
            arg = arg + ky * Y
        if kz:
            arg = arg + kz * Z
        out = out + amp * np.cos(arg)
    return out


def _random_waves(rng, n, wavelength_mm, amplitude):
    """n plane waves with random directions, wavelengths in the given range, amplitudes summing to ~amplitude sd."""
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    lam = rng.uniform(wavelength_mm[0], wavelength_mm[1], size=n)
    k = d * (2 * np.pi / lam)[:, None]
    ph = rng.uniform(0, 2 * np.pi, size=n)
    amp = np.full(n, amplitude * math.sqrt(2.0 / n))
    return np.column_stack([k, ph, amp])


# ----------------------------------------------------------------------------- the canonical anatomy

class _Anatomy:
    """All seed-dependent anatomy parameters and the implicit functions that use them (canonical frame, mm)."""

    def __init__(self, rng: np.random.Generator):
        u = rng.uniform
        # body: outer ellipse, fat and muscle thickness
        self.body_ax = 160.0 * u(0.95, 1.05)
        self.body_ay_ant = 112.0 * u(0.93, 1.07)
        self.body_ay_post = 124.0 * u(0.95, 1.05)
        self.fat = u(12.0, 26.0)
        self.wall = u(8.0, 12.0)
        # diaphragm domes: z = top - height * ((x - cx)^2 / wx^2 + (y - cy)^2 / wy^2)
        self.dome_r = (-62.0 + u(-6, 6), -5.0 + u(-6, 6), 95.0 + u(-5, 5), 95.0, 100.0, 70.0)
        self.dome_l = (58.0 + u(-6, 6), 5.0, 78.0 + u(-5, 5), 85.0, 95.0, 70.0)
        # liver lobes
        self.right_c = np.array([-72.0, 2.0, 12.0]) + rng.normal(0, 3, 3)
        self.right_r = np.array([63.0, 78.0, 80.0]) * u(0.9, 1.1, 3)
        self.left_c = np.array([46.0, -32.0, 22.0]) + rng.normal(0, 3, 3)
        self.left_r = np.array([100.0 * u(0.8, 1.2), 46.0 * u(0.85, 1.15), 44.0 * u(0.85, 1.15)])
        self.left_taper = u(0.4, 0.6)
        self.left_rot = _rotation(u(-0.1, 0.1), u(-0.15, 0.05), u(-0.25, 0.05))
        self.caud_c = np.array([-6.0, 16.0, 12.0]) + rng.normal(0, 2, 3)
        self.caud_r = np.array([23.0, 17.0, 33.0]) * u(0.9, 1.1, 3)
        self.inf_z0, self.inf_slope_x, self.inf_slope_y = -62.0 + u(-14, 10), u(0.28, 0.55), u(-0.2, 0.12)
        self.liver_waves = _random_waves(rng, 6, (90.0, 200.0), u(3.0, 5.5))
        # vessels: IVC and aorta axes (x, y) and radii
        self.ivc_xy = np.array([-22.0, 36.0]) + rng.normal(0, 2, 2)
        self.ivc_r = u(10.0, 12.5)
        self.aorta_xy = np.array([16.0, 48.0]) + rng.normal(0, 2, 2)
        self.aorta_r = u(10.5, 13.0)
        # other organs
        self.kid_r_c = np.array([-70.0, 58.0, -58.0]) + rng.normal(0, 4, 3)
        self.kid_l_c = np.array([72.0, 60.0, -45.0]) + rng.normal(0, 4, 3)
        self.kid_r = np.array([26.0, 21.0, 52.0]) * u(0.9, 1.1)
        self.kid_rot_r = _rotation(0.15, -0.25, 0.35)
        self.kid_rot_l = _rotation(0.15, 0.25, -0.35)
        self.spleen_c = np.array([98.0, 52.0, 22.0]) + rng.normal(0, 4, 3)
        self.spleen_r = np.array([26.0, 48.0, 50.0]) * u(0.85, 1.15)
        self.spleen_rot = _rotation(0.0, 0.0, -0.6)
        self.stomach_c = np.array([74.0, 14.0, 14.0]) + rng.normal(0, 4, 3)
        self.stomach_r = np.array([42.0, 40.0, 55.0]) * u(0.85, 1.1)
        self.stomach_rot = _rotation(0.0, 0.3, -0.4)
        self.stomach_air = u(0.15, 0.5)
        self.gb_c = np.array([-40.0, -48.0, -32.0]) + rng.normal(0, 3, 3)
        self.gb_r = np.array([14.0, 16.0, 34.0]) * u(0.8, 1.15)
        self.gb_rot = _rotation(-0.9, 0.0, 0.0)
        self.heart_c = np.array([28.0, -32.0, 138.0]) + rng.normal(0, 4, 3)
        self.heart_r = np.array([62.0, 52.0, 60.0]) * u(0.92, 1.08)
        self.panc_path = np.array([[-18.0, 12.0, -40.0], [30.0, 26.0, -26.0], [90.0, 36.0, -12.0]])
        self.colon_path = np.array([[-112.0, -10.0, -110.0], [-105.0, -30.0, -82.0], [-60.0, -55.0, -78.0],
                                    [20.0, -62.0, -86.0], [100.0, -30.0, -70.0]])
        self.colon_path[:, :2] += rng.normal(0, 4, (5, 2))
        self.bowel_waves = _random_waves(rng, 8, (40.0, 80.0), 1.0)
        self.fat_waves = _random_waves(rng, 4, (20.0, 50.0), 6.0)
        # ribs
        self.rib_pitch = u(32.0, 38.0)
        self.rib_phase = u(0.0, 1.0)
        self.rib_drop = u(120.0, 160.0)
        # Couinaud border shapes (radians): theta_v(r, z) = offset + kappa * (r - 40)/100 + lam * (z - zc)/100 + wiggle
        self.border = {v: (u(-0.35, 0.35), u(-0.3, 0.3), u(0.02, 0.07), u(40.0, 90.0), u(0, 2 * np.pi))
                       for v in ("RHV", "MHV", "LHV")}
        self.horiz = (u(-0.12, 0.12), u(-0.25, 0.05), u(-0.3, 0.3), _random_waves(rng, 3, (60.0, 140.0), u(2.0, 5.0)))
        self.frac_target = {k: v * math.exp(rng.normal(0, 0.12)) for k, v in REFERENCE_COUINAUD_FRACTIONS.items()}
        tot = sum(self.frac_target.values())
        self.frac_target = {k: v / tot for k, v in self.frac_target.items()}
        self.vein_descent = {v: u(0.35, 0.6) for v in ("RHV", "MHV", "LHV")}
        self.rng_vessels = np.random.default_rng(rng.integers(2**63))
        # calibrated later
        self.theta_off = {"RHV": 0.35, "MHV": 1.3, "LHV": 2.2}
        self.horiz_off = {"post": 0.0, "ant": 0.0, "iv": 0.0, "left": 0.0}
        self.left_tilt = None  # (x_ref, dz/dx) of the II/III border
        self.pb_xy = None  # portal bifurcation (x, y), set by calibration
        self.up_radius = UP_RADIUS  # distance of the umbilical portion's origin from the IVC axis
        self.caud_k = 1.0
        # hepatic-vein confluence: about 2 cm below the liver's upper surface at the IVC
        self.z_conf = float(self.z_dia(self.ivc_xy[0], self.ivc_xy[1])) - 5.0 - u(18.0, 24.0)

    # -- body ------------------------------------------------------------
    def body_k(self, X, Y, shrink=0.0):
        """Normalised radius of the body outline shrunk inward by `shrink` mm (1 on that contour)."""
        ay = np.where(Y < 0, self.body_ay_ant, self.body_ay_post) - shrink
        return np.sqrt((X / (self.body_ax - shrink)) ** 2 + (Y / ay) ** 2)

    def cavity_sd(self, X, Y):
        """Approximate signed distance (mm) to the inner wall of the abdominal/thoracic cavity."""
        inset = self.fat + self.wall
        a = self.body_ax - inset
        b = np.where(Y < 0, self.body_ay_ant, self.body_ay_post) - inset
        k = np.sqrt((X / a) ** 2 + (Y / b) ** 2)
        grad = np.sqrt((X / (a * a)) ** 2 + (Y / (b * b)) ** 2) / np.maximum(k, 1e-6)
        return (k - 1.0) / np.maximum(grad, 1.0 / np.maximum(a, b))

    def z_dia(self, X, Y):
        """Height (z, mm) of the diaphragm's lower (abdominal) surface above (x, y)."""
        cx, cy, top, wx, wy, h = self.dome_r
        zr = top - h * (((X - cx) / wx) ** 2 + ((Y - cy) / wy) ** 2)
        cx, cy, top, wx, wy, h = self.dome_l
        zl = top - h * (((X - cx) / wx) ** 2 + ((Y - cy) / wy) ** 2)
        return _smax(zr, zl, 25.0)

    def ivc_axis(self, Z):
        """IVC centre (x, y) at height Z: vertical, curving forward into the right atrium above the confluence."""
        above = np.maximum(Z - (self.z_conf + 8.0), 0.0)
        return self.ivc_xy[0] + 0.15 * above, self.ivc_xy[1] - 0.7 * above

    def ivc_sd(self, X, Y, Z):
        ix, iy = self.ivc_axis(Z)
        return np.sqrt((X - ix) ** 2 + (Y - iy) ** 2) - self.ivc_r

    # -- liver -----------------------------------------------------------
    def liver_sd(self, X, Y, Z):
        """Approximate signed distance (mm, negative inside) of the liver surface (vessels included, IVC excluded)."""
        d_right = _ellipsoid_sd(X, Y, Z, self.right_c, self.right_r)
        dx, dy, dz = X - self.left_c[0], Y - self.left_c[1], Z - self.left_c[2]
        r = self.left_rot.T
        lx = r[0, 0] * dx + r[0, 1] * dy + r[0, 2] * dz
        ly = r[1, 0] * dx + r[1, 1] * dy + r[1, 2] * dz
        lz = r[2, 0] * dx + r[2, 1] * dy + r[2, 2] * dz
        taper = np.clip(1.0 - self.left_taper * lx / self.left_r[0], 0.25, 1.6)
        k = np.sqrt((lx / self.left_r[0]) ** 2 + (ly / (self.left_r[1] * taper)) ** 2 + (lz / (self.left_r[2] * taper)) ** 2)
        d_left = (k - 1.0) * self.left_r[1] * taper
        d_caud = _ellipsoid_sd(X, Y, Z, self.caud_c, self.caud_r)
        d = _smin(_smin(d_right, d_left, 22.0), d_caud, 10.0)
        d = d + 6.0 * np.tanh(_waves(X, Y, Z, self.liver_waves) / 6.0)  # surface undulation, at most 6 mm
        d = _smax(d, Z - (self.z_dia(X, Y) - 5.0), 4.0)  # under the diaphragm
        z_inf = self.inf_z0 + self.inf_slope_x * (X + 100.0) + self.inf_slope_y * Y
        d = _smax(d, z_inf - Z, 10.0)  # visceral (inferior) surface
        d = np.maximum(d, self.cavity_sd(X, Y) + 1.5)
        d = np.maximum(d, 2.0 - self.ivc_sd(X, Y, Z))
        d = np.maximum(d, 2.0 - self.kidney_sd(X, Y, Z, right=True))
        d = np.maximum(d, 2.0 - self.stomach_sd(X, Y, Z))
        d = np.maximum(d, 1.5 - self.gallbladder_sd(X, Y, Z))
        d = np.maximum(d, 3.0 - (np.sqrt((X - self.aorta_xy[0]) ** 2 + (Y - self.aorta_xy[1]) ** 2) - self.aorta_r))
        return d

    def kidney_sd(self, X, Y, Z, right):
        c, rot = (self.kid_r_c, self.kid_rot_r) if right else (self.kid_l_c, self.kid_rot_l)
        return _ellipsoid_sd(X, Y, Z, c, self.kid_r, rot)

    def stomach_sd(self, X, Y, Z):
        return _ellipsoid_sd(X, Y, Z, self.stomach_c, self.stomach_r, self.stomach_rot)

    def gallbladder_sd(self, X, Y, Z):
        return _ellipsoid_sd(X, Y, Z, self.gb_c, self.gb_r, self.gb_rot)

    # -- Couinaud ----------------------------------------------------------
    def theta_r(self, X, Y):
        """Azimuth about the IVC axis (radians; 0 = patient right, pi/2 = anterior, pi = left) and radius (mm)."""
        dx, dy = X - self.ivc_xy[0], Y - self.ivc_xy[1]
        th = np.arctan2(-dy, -dx)
        th = np.where(th < -np.pi / 2, th + 2 * np.pi, th)
        return th, np.sqrt(dx * dx + dy * dy)

    def border_shape(self, vein, r, z):
        kappa, lam, amp, wl, ph = self.border[vein]
        return kappa * (r - 40.0) / 100.0 + lam * (z - self.z_conf) / 100.0 + amp * np.sin(2 * np.pi * r / wl + ph)

    def horiz_shape(self, X, Y, Z=0.0):
        ax, ay, c, waves = self.horiz
        return ax * X + ay * Y + c * ((X + 30.0) / 100.0) ** 2 * 30.0 + _waves(X, Y, 0.0 * X, waves)

    def sectors(self, X, Y, Z):
        """Sector index at canonical points: 0 right posterior, 1 right anterior, 2 IV, 3 left lateral."""
        th, r = self.theta_r(X, Y)
        sec = np.full(np.shape(th), 3, np.uint8)
        for i, vein in ((2, "LHV"), (1, "MHV"), (0, "RHV")):
            sec[th < self.theta_off[vein] + self.border_shape(vein, r, Z)] = i
        return sec

    def horiz_offset(self, sector, X=None):
        """Height offset (mm) of the superior/inferior border surface in each sector.

        In the left lateral sector the border is tilted: it meets the umbilical portion's origin and
        rises toward the patient's left (II posterosuperior, III anteroinferior).
        """
        offs = np.array([self.horiz_off[k] for k in ("post", "ant", "iv", "left")])
        out = offs[sector]
        if X is not None and self.left_tilt is not None:
            x_ref, tilt = self.left_tilt
            out = np.where(sector == 3, out + tilt * (X - x_ref), out)
        return out

    def portal_bifurcation_xy(self):
        """(x, y) of the portal bifurcation: just right of the IVC axis, in front of the caudate lobe."""
        if self.pb_xy is not None:
            return self.pb_xy
        return self.ivc_xy[0] - 4.0, self.caud_c[1] - self.caud_r[1] * self.caud_k - 9.0

    def place_portal_bifurcation(self, z_of_xy):
        """Move the bifurcation (within 12 mm) to where the liver is thickest at its height z_of_xy(x, y)."""
        self.pb_xy = None
        x0, y0 = self.portal_bifurcation_xy()
        gx, gy = np.meshgrid(np.arange(-12.0, 12.1, 2.0), np.arange(-12.0, 8.1, 2.0))
        xs, ys = (x0 + gx).ravel(), (y0 + gy).ravel()
        zs = np.array([z_of_xy(x, y) for x, y in zip(xs, ys)])  # one grid: equal lengths
        sd = self.liver_sd(xs, ys, zs)
        caud = _ellipsoid_k(xs, ys, zs, self.caud_c, self.caud_r) < self.caud_k + 0.1
        cost = np.minimum(sd, -12.0) + 0.05 * np.hypot(gx.ravel(), gy.ravel()) + 100.0 * caud
        i = int(np.argmin(cost))
        self.pb_xy = (float(xs[i]), float(ys[i]))

    def couinaud(self, X, Y, Z):
        """Couinaud label 1..8 at liver points (arrays of canonical coordinates)."""
        sec = self.sectors(X, Y, Z)
        sup = Z - self.horiz_shape(X, Y) > self.horiz_offset(sec, X)
        out = np.array([[6, 7], [5, 8], [4, 4], [3, 2]], np.uint8)[sec, sup.astype(np.intp)]
        out[_ellipsoid_k(X, Y, Z, self.caud_c, self.caud_r) < self.caud_k] = 1
        return out


# ----------------------------------------------------------------------------- output grid

@dataclass
class _Grid:
    size: tuple[int, int, int]  # (nx, ny, nz)
    spacing: tuple[float, float, float]
    origin: np.ndarray  # physical LPS mm
    direction: np.ndarray  # 3x3, columns = index axes
    centre: np.ndarray  # physical position of the canonical origin
    scale: float

    @property
    def shape(self):
        return (self.size[2], self.size[1], self.size[0])

    def q_affine(self):
        """Canonical coordinates q = q0 + A @ (i, j, k)."""
        m = self.direction * np.asarray(self.spacing)[None, :]
        return (self.origin - self.centre) / self.scale, m / self.scale

    def box(self, qmin, qmax):
        """Index slices (z, y, x) of the grid covering the canonical box [qmin, qmax], or None when outside."""
        q0, a = self.q_affine()
        inv = np.linalg.inv(a)
        corners = np.array([[x, y, z] for x in (qmin[0], qmax[0]) for y in (qmin[1], qmax[1]) for z in (qmin[2], qmax[2])])
        idx = (corners - q0) @ inv.T
        lo = np.maximum(np.floor(idx.min(axis=0)).astype(int), 0)
        hi = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, np.asarray(self.size))
        if np.any(hi <= lo):
            return None
        return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))

    def coords(self, sl, step=(1, 1, 1)):
        """Canonical X, Y, Z (float32, broadcastable to the box shape) of the voxels of index slices sl.

        With step > 1 along an axis, every step-th index from the slice start on, up to and including
        the first index at or past the slice end (so that linear interpolation covers the whole box).
        """
        q0, a = self.q_affine()
        ax_idx = []
        for s, st in zip_equal(sl, step):
            n = -(-(s.stop - 1 - s.start) // st) + 1 if st > 1 else s.stop - s.start
            ax_idx.append(s.start + st * np.arange(n, dtype=np.float32))
        k = ax_idx[0][:, None, None]
        j = ax_idx[1][None, :, None]
        i = ax_idx[2][None, None, :]
        out = []
        for ax in range(3):
            c = np.float32(q0[ax])
            for coef, idx in ((a[ax, 0], i), (a[ax, 1], j), (a[ax, 2], k)):
                if abs(coef) > 1e-9:
                    c = c + np.float32(coef) * idx
            out.append(np.asarray(c, dtype=np.float32))
        return out

    def chunks(self, sl, max_voxels=3_000_000):
        """Split index slices along z into chunks of at most max_voxels."""
        nz = sl[0].stop - sl[0].start
        per = max(1, (sl[1].stop - sl[1].start) * (sl[2].stop - sl[2].start))
        step = max(1, max_voxels // per)
        for z0 in range(sl[0].start, sl[0].start + nz, step):
            yield (slice(z0, min(z0 + step, sl[0].stop)), sl[1], sl[2])

    def to_physical(self, q):
        return self.centre + self.scale * np.asarray(q, dtype=float)

    def image(self, array):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(tuple(float(s) for s in self.spacing))
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return img


def _full(a, shape):
    return np.broadcast_to(a, shape)


def _upsample(a, shape, step):
    """Linear interpolation of samples taken every step voxels (from index 0) back to the full box shape."""
    for axis, (n, st) in enumerate(zip_equal(shape, step)):
        if st == 1 or a.shape[axis] == n:
            continue
        pos = np.arange(n, dtype=np.float32) / st
        i0 = np.minimum(pos.astype(np.intp), a.shape[axis] - 1)
        i1 = np.minimum(i0 + 1, a.shape[axis] - 1)
        w = (pos - i0).reshape([-1 if d == axis else 1 for d in range(a.ndim)])
        a0 = np.take(a, i0, axis=axis)
        a = a0 + (np.take(a, i1, axis=axis) - a0) * w
    return a


def _field_step(grid, feature_mm):
    """Sub-sampling steps (z, y, x) that keep sample spacing below feature_mm (physical)."""
    sp = grid.spacing
    return tuple(max(1, int(feature_mm // sp[ax])) for ax in (2, 1, 0))


def _smooth_field(grid, sl, fn, feature_mm=3.0):
    """A smooth function of canonical (X, Y, Z) on index slices sl, evaluated on a sub-sampled grid and interpolated."""
    step = _field_step(grid, feature_mm)
    shape = tuple(s.stop - s.start for s in sl)
    if step == (1, 1, 1):
        X, Y, Z = (_full(c, shape) for c in grid.coords(sl))
        return np.asarray(fn(X, Y, Z), np.float32)
    X, Y, Z = grid.coords(sl, step)
    cshape = np.broadcast_shapes(X.shape, Y.shape, Z.shape)
    X, Y, Z = (_full(c, cshape) for c in (X, Y, Z))
    return _upsample(np.asarray(fn(X, Y, Z), np.float32), shape, step)


# ----------------------------------------------------------------------------- coarse canonical grid

class _Coarse:
    """The liver on a canonical grid (3 mm): calibration of borders, centroids, placement of vessels and lesions."""

    def __init__(self, anat: _Anatomy):
        self.lo = np.array([-170.0, -130.0, -120.0])
        self.hi = np.array([140.0, 120.0, 130.0])
        axes = [np.arange(self.lo[d], self.hi[d], _COARSE_MM, dtype=np.float32) for d in range(3)]
        Z, Y, X = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        self.axes = axes
        self.mask = anat.liver_sd(X, Y, Z) < 0
        self.X, self.Y, self.Z = X[self.mask], Y[self.mask], Z[self.mask]

    def points(self):
        return np.column_stack([self.X, self.Y, self.Z])

    def volume_ml(self):
        return self.mask.sum() * _COARSE_MM**3 / 1000.0

    def inside_sd(self, anat, pts):
        pts = np.asarray(pts, dtype=float)
        return anat.liver_sd(pts[:, 0], pts[:, 1], pts[:, 2])


def _calibrate(anat: _Anatomy, coarse: _Coarse) -> np.ndarray:
    """Set border offsets so segment volume fractions meet this seed's targets; returns coarse labels."""
    X, Y, Z = coarse.X, coarse.Y, coarse.Z
    f = anat.frac_target
    kc = _ellipsoid_k(X, Y, Z, anat.caud_c, anat.caud_r)
    anat.caud_k = float(min(np.quantile(kc, f[1]), 1.5))
    rest = kc >= anat.caud_k
    th, r = anat.theta_r(X, Y)
    th, r, Zr = th[rest], r[rest], Z[rest]
    remaining = 1.0 - f[1]
    order = (("RHV", f[6] + f[7]), ("MHV", f[5] + f[8]), ("LHV", f[4]))
    keep = np.ones(th.shape, bool)
    for vein, frac in order:
        v = th - anat.border_shape(vein, r, Zr)
        q = min(max(frac / remaining, 0.02), 0.98)
        anat.theta_off[vein] = float(np.quantile(v[keep], q))
        keep &= v >= anat.theta_off[vein]
        remaining -= frac
    sec = anat.sectors(X[rest], Y[rest], Zr)
    h = Zr - anat.horiz_shape(X[rest], Y[rest])
    for i, key, inf, sup in ((0, "post", f[6], f[7]), (1, "ant", f[5], f[8]), (2, "iv", 0.4, 0.6)):
        sel = h[sec == i]
        anat.horiz_off[key] = float(np.quantile(sel, inf / (inf + sup))) if len(sel) else 0.0
    # left lateral: a tilted border through the umbilical portion's origin (at the bifurcation's height)
    def z_bif(x, y):
        return 0.5 * (anat.horiz_off["ant"] + anat.horiz_off["post"]) + float(anat.horiz_shape(np.array(x), np.array(y)))

    anat.place_portal_bifurcation(z_bif)
    bx, by = anat.portal_bifurcation_xy()
    bz = z_bif(bx, by)
    for r_up in np.arange(UP_RADIUS, 100.0, 2.0):  # the LPV's transverse part: at least 25 mm long
        u0 = _vein_point(anat, "LHV", r_up, bz)
        if math.hypot(u0[0] - bx, u0[1] - by) >= 25.0:
            break
    anat.up_radius = float(r_up)
    anat.horiz_off["left"] = bz - float(anat.horiz_shape(np.array(u0[0]), np.array(u0[1])))
    left = sec == 3
    hl, xl = h[left] - anat.horiz_off["left"], X[rest][left] - u0[0]
    want = f[3] / (f[2] + f[3])
    lo, hi = -0.3, 0.45  # at most ~24 degrees
    for _ in range(30):  # fraction inferior grows with the tilt where x > x_ref
        mid = 0.5 * (lo + hi)
        if np.mean(hl <= mid * xl) < want:
            lo = mid
        else:
            hi = mid
    tilt = 0.5 * (lo + hi)
    shift = float(np.quantile(hl - tilt * xl, want))  # ~0 unless the tilt limit was reached
    anat.horiz_off["left"] += max(shift, 0.0) if tilt > 0.44 else min(shift, 0.0) if tilt < -0.29 else 0.0
    anat.left_tilt = (float(u0[0]), tilt)
    return anat.couinaud(X, Y, Z)


# ----------------------------------------------------------------------------- vessels

@dataclass
class _Tube:
    points: np.ndarray  # (n, 3) canonical centreline
    radii: np.ndarray  # (n,) canonical mm
    label: int
    name: str


def _truncate_inside(anat, pts, radii, margin=1.0, enter=False):
    """Cut a polyline at the first point closer to the liver surface than its radius + margin.

    enter: the polyline may start near the surface (a branch leaving the hilum) and is cut only where it
    comes near the surface again after it has first been well inside.
    """
    sd = anat.liver_sd(pts[:, 0], pts[:, 1], pts[:, 2])
    near = sd > -(radii + margin)
    if enter and (~near).any():
        near[:int(np.argmax(~near))] = False
    bad = np.nonzero(near)[0]
    bad = bad[bad > 0]
    n = bad[0] if len(bad) else len(pts)
    return pts[:n], radii[:n]


def _push_inside(anat, pts, radii, margin=1.5, iterations=6):
    """Move polyline points that lie closer to the liver surface than radius + margin inward along the
    surface normal (numerical gradient of the signed distance); points already deep enough are unchanged."""
    pts = np.array(pts, dtype=float)
    eps = 0.5
    for _ in range(iterations):
        sd = anat.liver_sd(pts[:, 0], pts[:, 1], pts[:, 2])
        short = sd + radii + margin
        move = short > 0
        if not move.any():
            break
        q = pts[move]
        grad = np.stack([(anat.liver_sd(*(q + d).T) - anat.liver_sd(*(q - d).T)) / (2 * eps)
                         for d in np.eye(3) * eps], axis=1)
        grad /= np.linalg.norm(grad, axis=1, keepdims=True) + 1e-9
        pts[move] = q - grad * short[move, None]
    return pts


def _polyline(a, b, step=3.0, bend=None, rng=None, wiggle=0.0):
    """Points from a to b every ~step mm, with an optional smooth sideways wiggle."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = max(2, int(np.linalg.norm(b - a) / step) + 1)
    t = np.linspace(0, 1, n)
    pts = a[None] + t[:, None] * (b - a)[None]
    if wiggle and rng is not None:
        d = (b - a) / (np.linalg.norm(b - a) + 1e-9)
        side = np.cross(d, rng.normal(size=3))
        side /= np.linalg.norm(side) + 1e-9
        pts += (wiggle * np.sin(np.pi * t) * np.sin(2 * np.pi * t * rng.uniform(0.5, 1.5) + rng.uniform(0, 6)))[:, None] * side
    return pts


def _vein_point(anat, vein, r, z):
    th = anat.theta_off[vein] + anat.border_shape(vein, r, z)
    return np.array([anat.ivc_xy[0] - r * math.cos(th), anat.ivc_xy[1] - r * math.sin(th), z])


def _build_vessels(anat: _Anatomy, coarse: _Coarse, labels_coarse: np.ndarray, scale: float = 1.0):
    """Hepatic veins, IVC, portal tree (canonical tubes) and the landmarks (canonical)."""
    rng = anat.rng_vessels
    tubes: list[_Tube] = []
    marks: dict[str, np.ndarray] = {}
    pts_all = coarse.points()
    cent = {k: pts_all[labels_coarse == k].mean(axis=0) for k in range(1, 9) if np.any(labels_coarse == k)}

    # IVC: vertical tube through the whole field, forward into the atrium at the top
    zs = np.arange(-200.0, 200.0, 4.0)
    ix, iy = anat.ivc_axis(zs)
    ivc_tube = _Tube(np.column_stack([ix, iy, zs]), np.full(len(zs), anat.ivc_r), labels.TRUTH_IVC, "IVC")
    marks["IVC"] = np.array([anat.ivc_xy[0], anat.ivc_xy[1], anat.z_conf])
    caud = labels_coarse == 1
    z_low = float(np.quantile(pts_all[caud, 2], 0.02)) if caud.any() else anat.z_conf - 60
    marks["IVC_inferior"] = np.array([*anat.ivc_axis(np.array(z_low)), z_low], dtype=float).ravel()
    marks["IVC_inferior"] = np.array([float(v) for v in marks["IVC_inferior"]])

    # hepatic veins: from the confluence outward and downward along their border surfaces
    for vein, r0 in (("RHV", 6.5), ("MHV", 6.0), ("LHV", 5.5)):
        desc = anat.vein_descent[vein]
        rr = np.arange(0.0, 160.0, 2.5)  # z below is computed from rr: zip(rr, z) pairs equal lengths
        z = anat.z_conf + 4.0 - 0.3 * rr
        for _ in range(3):  # follow the diaphragmatic surface at a depth growing outward
            pts = np.array([_vein_point(anat, vein, r, zz) for r, zz in zip(rr, z)])
            z_top = anat.z_dia(pts[:, 0], pts[:, 1]) - 5.0
            z = np.minimum(z_top - (anat.z_dia(*anat.ivc_xy) - 5.0 - anat.z_conf) - desc * 0.5 * rr,
                           anat.z_conf + 4.0 - 0.1 * rr)
        pts = np.array([_vein_point(anat, vein, r, zz) for r, zz in zip(rr, z)])
        pts[0] = [anat.ivc_xy[0], anat.ivc_xy[1], anat.z_conf + 4.0]
        radii = np.maximum(r0 * (1 - rr / 180.0), 1.6)
        inside = anat.liver_sd(pts[:, 0], pts[:, 1], pts[:, 2]) < -(radii + 1.0)
        first = int(np.argmax(inside)) if inside.any() else len(inside)
        inside[:first] = True  # the stretch from the IVC lumen through its wall into the liver
        bad = np.nonzero(~inside)[0]
        n = bad[0] if len(bad) else len(pts)
        pts, radii = pts[:n], radii[:n]
        tubes.append(_Tube(pts, radii, labels.TRUTH_HEPATIC_VEIN, vein))
        # landmark ~3 cm (physical ~35 mm from the IVC axis, canonical here) out along the vein
        dist = np.linalg.norm(pts[:, :2] - anat.ivc_xy[None], axis=1)
        i_mark = int(np.argmin(np.abs(dist - rng.uniform(28.0, 40.0) / scale)))
        marks[vein] = pts[i_mark].copy()
        # tributaries
        for _ in range(rng.integers(2, 5)):
            if len(pts) < 12:
                break
            i = int(rng.integers(8, len(pts) - 2))
            d = pts[min(i + 2, len(pts) - 1)] - pts[i]
            d /= np.linalg.norm(d) + 1e-9
            side = np.cross(d, [0, 0, 1.0])
            side /= np.linalg.norm(side) + 1e-9
            direction = 0.6 * d + rng.choice([-1.0, 1.0]) * 0.8 * side + rng.normal(0, 0.25, 3)
            direction /= np.linalg.norm(direction)
            length = rng.uniform(20, 45)
            bp = _polyline(pts[i], pts[i] + length * direction, 2.5, rng=rng, wiggle=3.0)
            br = np.linspace(max(radii[i] * 0.6, 1.6), 1.5, len(bp))
            bp, br = _truncate_inside(anat, bp, br)
            if len(bp) >= 2:
                tubes.append(_Tube(bp, br, labels.TRUTH_HEPATIC_VEIN, vein + "_trib"))

    # portal bifurcation: on the superior/inferior border, anterior to the caudate, right of the fissure
    bx, by = anat.portal_bifurcation_xy()
    bz = float(0.5 * (anat.horiz_off["ant"] + anat.horiz_off["post"]) + anat.horiz_shape(np.array(bx), np.array(by)))
    pb = np.array([bx, by, bz])
    trunk_start = np.array([bx + 22.0, by + 18.0, bz - 60.0])
    trunk = _polyline(trunk_start, pb, 3.0)
    tubes.append(_Tube(trunk, np.full(len(trunk), 7.0), labels.TRUTH_PORTAL_VEIN, "PV"))

    def horiz_z(x, y):
        sec = anat.sectors(np.array([x]), np.array([y]), np.array([bz]))
        return float(anat.horiz_offset(sec, np.array([x]))[0] + anat.horiz_shape(np.array(x), np.array(y)))

    def branch(a, b, ra, rb, name, extend=1.6, wiggle=3.0, sub=2, enter=False):
        end = a + extend * (b - a)
        pts = _polyline(a, end, 2.5, rng=rng, wiggle=wiggle)
        radii = np.linspace(ra, rb, len(pts))
        if enter:  # keep the branch inside the liver all the way (it starts at the hilum, near the surface)
            pts[1:] = _push_inside(anat, pts[1:], radii[1:])
        pts, radii = _truncate_inside(anat, pts, radii, enter=enter)
        if len(pts) < 2:
            return None
        tubes.append(_Tube(pts, radii, labels.TRUTH_PORTAL_VEIN, name))
        for _ in range(sub):
            if len(pts) < 6:
                break
            i = int(rng.integers(3, len(pts) - 1))
            d = pts[-1] - pts[0]
            d /= np.linalg.norm(d) + 1e-9
            direction = d + rng.normal(0, 0.9, 3)
            direction /= np.linalg.norm(direction)
            bp = _polyline(pts[i], pts[i] + rng.uniform(18, 35) * direction, 2.5, rng=rng, wiggle=2.0)
            br = np.linspace(max(radii[i] * 0.55, 1.6), 1.5, len(bp))
            bp, br = _truncate_inside(anat, bp, br)
            if len(bp) >= 2:
                tubes.append(_Tube(bp, br, labels.TRUTH_PORTAL_VEIN, name + "_sub"))
        return pts

    # right portal vein: short trunk to the right, then anterior (V/VIII) and posterior (VI/VII) sectoral branches
    rs = pb + np.array([-24.0, 2.0, 0.0])
    rs[2] = horiz_z(rs[0], rs[1])
    rpv = _polyline(pb, rs, 2.5)
    tubes.append(_Tube(rpv, np.full(len(rpv), 6.0), labels.TRUTH_PORTAL_VEIN, "RPV"))
    marks["RPV"] = rpv[min(3, len(rpv) - 1)].copy()
    for sector, (sup, inf) in (("ant", (8, 5)), ("post", (7, 6))):
        if sup not in cent or inf not in cent:
            continue
        mid = 0.5 * (cent[sup] + cent[inf])
        mid[2] = horiz_z(mid[0], mid[1])
        start = rs.copy()
        # the sectoral branch leaves the hilum, which can lie close to the visceral surface
        sec = branch(start, mid, 5.0, 4.2, f"RPV_{sector}", extend=1.0, wiggle=2.0, sub=0, enter=True)
        if sec is None:
            continue
        end = sec[-1]
        branch(end, cent[sup], 4.0, 2.0, f"seg{sup}", extend=1.7)
        branch(end, cent[inf], 4.0, 2.0, f"seg{inf}", extend=1.7)

    # left portal vein: transverse part to the umbilical fissure (on the LHV border surface), then the UP
    r_u, z_u = anat.up_radius, bz
    u0 = _vein_point(anat, "LHV", r_u, z_u)
    u0[2] = horiz_z(u0[0], u0[1])
    lpv = _polyline(pb, u0, 2.5)
    tubes.append(_Tube(lpv, np.full(len(lpv), 5.5), labels.TRUTH_PORTAL_VEIN, "LPV"))
    marks["LPV"] = lpv[min(4, max(len(lpv) // 2, 1))].copy()
    # umbilical portion: anteriorly along the IV | II-III border surface, at the depth where the liver is thickest
    up, z = [u0], u0[2]
    dz = np.arange(-6.0, 6.5, 1.5)
    for t in np.arange(2.5, 45.0, 2.5):
        zc = z - 0.8 + dz
        cand = np.array([_vein_point(anat, "LHV", r_u + t, zz) for zz in zc])
        best = int(np.argmin(anat.liver_sd(cand[:, 0], cand[:, 1], cand[:, 2])))
        z = float(zc[best])
        up.append(cand[best])
    up = np.array(up)
    upr = np.linspace(5.0, 3.5, len(up))
    up, upr = _truncate_inside(anat, up, upr)
    if len(up) < 2:
        up = np.vstack([u0, u0 + [0, -3.0, 0]])
        upr = np.array([5.0, 5.0])
    tubes.append(_Tube(up, upr, labels.TRUTH_PORTAL_VEIN, "UP"))
    far = np.nonzero(np.linalg.norm(up - marks["LPV"], axis=1) >= 12.0)[0]
    marks["UP"] = up[max(len(up) // 2, int(far[0]) if len(far) else len(up) - 1)].copy()
    if 2 in cent:
        branch(u0, cent[2], 3.5, 2.0, "seg2", extend=1.7)
    if 3 in cent:
        branch(up[-1], cent[3], 3.5, 2.0, "seg3", extend=1.7)
    if 4 in cent:
        a = up[len(up) // 2]
        branch(a, cent[4] + np.array([0, 0, 15.0]), 3.0, 1.8, "seg4a", extend=1.6)
        branch(a, cent[4] - np.array([0, 0, 15.0]), 3.0, 1.8, "seg4b", extend=1.6)
    if 1 in cent:
        branch(pb, cent[1], 2.5, 1.6, "seg1", extend=1.3, wiggle=1.0, sub=0)
    tubes.append(ivc_tube)  # last: the IVC wins where hepatic veins enter it
    return tubes, marks


# ----------------------------------------------------------------------------- lesions

SURFACE_CHANCE = 0.3    # a lesion placed at the liver's surface
BULGE_CHANCE = 0.6      # a surface lesion that bulges out of the liver (into the fat round it)
VESSEL_CHANCE = 0.25    # a lesion allowed to abut a vessel
CLUSTER_CHANCE = 0.3    # a metastasis with 1-3 smaller ones touching it
DEPOSIT_CHANCE = 0.3    # a metastasis or HCC of 25 mm or more with calcifications or lipiodol inside or at its edge
SEPTA_CHANCE = 0.3      # a metastasis with septa through its necrotic interior


def _lesion_spec(kind: str, centre, radii, rng, bulge: bool = False) -> dict:
    """A lesion's shape and the parameters of its enhancement pattern (HU follow at rendering, from the scan's
    parenchyma and enhancement; `_lesion_values`)."""
    u = rng.uniform
    spec = {"kind": kind, "centre": np.asarray(centre, float), "radii": radii, "rmax": float(radii.max()),
            "rot": _rotation(*u(-np.pi, np.pi, 3)), "bulge": bool(bulge),
            "shape_waves": _random_waves(rng, 4, (1.2, 3.0), u(0.06, 0.14)),
            "texture": _random_waves(rng, 6, (4.0, 12.0), 1.0)}
    if kind == "cyst":
        spec["hu"] = u(0.0, 15.0)
    elif kind == "haemangioma":
        spec["contrast"], spec["fill"] = u(15.0, 45.0), u(0.3, 0.65)
    elif kind == "metastasis":
        # hypovascular: darker than the parenchyma by 12-30 HU and by up to 30 HU more where the liver enhances
        # well; large ones are often faint
        spec["contrast"], spec["uptake_gap"] = u(12.0, 30.0), u(0.0, 30.0)
        # the viable rim: darker or brighter than the parenchyma (x enhancement), never the same (a rim as bright
        # as the liver would be invisible, and no reader would draw the tumour's border out to it)
        spec["rim"] = float(rng.choice([-1.0, 1.0])) * u(8.0, 25.0)
        spec["necrosis"] = u(0.0, 0.6)
        spec["septa"] = bool(rng.random() < SEPTA_CHANCE)
    else:  # hcc: washout in the portal phase, an enhancing capsule, a mosaic interior
        spec["contrast"], spec["washout"], spec["capsule"] = u(5.0, 12.0), u(5.0, 25.0), u(5.0, 25.0)
    diameter = 2.0 * float(np.cbrt(np.prod(radii)))
    if kind in ("metastasis", "hcc") and diameter >= 25.0 and rng.random() < DEPOSIT_CHANCE:
        n = int(rng.integers(2, 7))
        directions = rng.normal(0.0, 1.0, (n, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        spec["deposits"] = [(d * u(0.3, 1.0), u(1.5, 4.0), u(250.0, 700.0)) for d in directions]
    return spec


def _place_lesions(anat, coarse, tubes, rng, n, kinds, scale):
    """Lesion specs (canonical): centre, radii, rotation, waves, kind, pattern parameters.

    Placement: deep in the liver, or at its surface (`SURFACE_CHANCE`, bulging out of it with `BULGE_CHANCE`),
    clear of the vessels unless allowed to abut one (`VESSEL_CHANCE`), apart from each other except the smaller
    metastases a metastasis may have touching it (`CLUSTER_CHANCE`)."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    edt = ndimage.distance_transform_edt(coarse.mask, sampling=_COARSE_MM)[coarse.mask]
    vpts, vrad = [], []
    for t in tubes:
        if t.label == labels.TRUTH_IVC:
            continue
        vpts.append(t.points)
        vrad.append(t.radii)
    vtree = cKDTree(np.vstack(vpts))
    vr = np.concatenate(vrad)
    pts = coarse.points()
    tree = cKDTree(pts)

    def clear_of_vessels(c, rmax, clearance):
        d_near, i_near = vtree.query(c, k=8)
        return bool(np.all(d_near > clearance * rmax + vr[i_near]))

    specs: list[dict] = []
    for _ in range(n):
        if len(specs) >= n:
            break
        kind = str(rng.choice(kinds))
        lo, hi = KIND_DIAMETER_MM[kind]
        diameter = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        surface = rng.random() < SURFACE_CHANCE
        bulge = surface and rng.random() < BULGE_CHANCE
        clearance = 0.2 if rng.random() < VESSEL_CHANCE else 0.6
        for attempt in range(24):
            if attempt >= 4:  # no room: try smaller, never below 5 mm
                diameter = max(5.0, diameter * 0.88)
            radii = 0.5 * diameter / scale * rng.uniform(0.8, 1.2, 3)
            rmax = float(radii.max())
            need = (0.45 if bulge else 0.75) * rmax if surface else rmax + 2.0
            ok = (edt >= need) & (edt <= (need + 4.0 if surface else np.inf))
            cand = np.nonzero(ok)[0]
            if len(cand) > 0:
                c = pts[rng.choice(cand)] + rng.uniform(-1.5, 1.5, 3)
                if clear_of_vessels(c, rmax, clearance) and all(
                        np.linalg.norm(c - s["centre"]) > rmax + s["rmax"] + 3.0 for s in specs):
                    break
        else:
            continue
        specs.append(_lesion_spec(kind, c, radii, rng, bulge))
        if kind == "metastasis" and rng.random() < CLUSTER_CHANCE:
            specs += _satellites(specs[-1], specs[:-1], rng, scale, tree, edt, clear_of_vessels)[:n - len(specs)]
    return specs


def _satellites(primary, others, rng, scale, tree, edt, clear_of_vessels) -> list[dict]:
    """1-3 smaller metastases (5-25 mm, at most 0.8 of the primary) touching a metastasis, inside the liver."""
    out: list[dict] = []
    for _ in range(int(rng.integers(1, 4))):
        diameter = min(rng.uniform(5.0, 25.0), 0.8 * 2.0 * primary["rmax"] * scale)
        radii = 0.5 * diameter / scale * rng.uniform(0.85, 1.15, 3)
        for _attempt in range(12):
            direction = rng.normal(0.0, 1.0, 3)
            direction /= np.linalg.norm(direction)
            c = primary["centre"] + direction * (primary["rmax"] + float(radii.max()) * rng.uniform(0.5, 0.9))
            depth = edt[tree.query(c)[1]]
            if depth >= 0.75 * radii.max() and clear_of_vessels(c, float(radii.max()), 0.2) and all(
                    np.linalg.norm(c - s["centre"]) > float(radii.max()) + s["rmax"] + 2.0 for s in others + out):
                out.append(_lesion_spec("metastasis", c, radii, rng))
                break
    return out


def _lesion_values(spec, X, Y, Z, prm):
    """Normalised radius rho (<1 inside) and clean HU of a lesion at canonical points, for a scan whose
    parenchyma, blood pool and enhancement factor are in `prm` (`_hu_params`)."""
    c, rot = spec["centre"], spec["rot"]
    dx, dy, dz = X - c[0], Y - c[1], Z - c[2]
    r = rot.T
    lx = r[0, 0] * dx + r[0, 1] * dy + r[0, 2] * dz
    ly = r[1, 0] * dx + r[1, 1] * dy + r[1, 2] * dz
    lz = r[2, 0] * dx + r[2, 1] * dy + r[2, 2] * dz
    rho = np.sqrt((lx / spec["radii"][0]) ** 2 + (ly / spec["radii"][1]) ** 2 + (lz / spec["radii"][2]) ** 2)
    n = np.maximum(rho, 1e-3)
    ux, uy, uz = lx / spec["radii"][0] / n, ly / spec["radii"][1] / n, lz / spec["radii"][2] / n
    rho = rho / (1.0 + _waves(ux, uy, uz, spec["shape_waves"]))
    tex = _waves(X, Y, Z, spec["texture"])  # sd ~1
    liver, e, blood = prm["liver"], prm["enhancement"], prm["portal"]
    kind = spec["kind"]
    if kind == "cyst":
        hu = spec["hu"] + 1.5 * tex
    elif kind == "haemangioma":
        # globular nodules as bright as blood pool in a peripheral band that fills in centripetally
        base = liver - spec["contrast"]
        nodules = np.clip((tex - 0.1) * 2.5, 0, 1)
        band = np.clip((rho - (1 - spec["fill"])) / 0.1, 0, 1)
        hu = base + 4.0 * tex + (blood - base) * band * np.maximum(nodules, 0.25)
    elif kind == "metastasis":
        viable = liver - spec["contrast"] - e * spec["uptake_gap"]
        core = viable - (viable - 15.0) * spec["necrosis"] * np.clip(1 - rho / 0.6, 0, 1)
        if spec.get("septa"):
            core = np.where(np.abs(np.sin(3.0 * tex)) < 0.15, viable, core)
        rim = np.clip((rho - 0.86) / 0.07, 0, 1)
        hu = core + 10.0 * tex + (liver + e * spec["rim"] - core) * rim
    else:
        interior = liver - spec["contrast"] - e * spec["washout"]
        mosaic = np.where(tex > 0.3, 8.0, -6.0)
        capsule = np.clip((rho - 0.84) / 0.06, 0, 1)
        hu = interior + mosaic + 3.0 * tex + e * spec["capsule"] * capsule
    for direction, radius, value in spec.get("deposits", []):
        offset = direction * spec["radii"]
        p = c + rot @ offset
        d2 = (X - p[0]) ** 2 + (Y - p[1]) ** 2 + (Z - p[2]) ** 2
        hu = np.where(d2 <= radius ** 2, value, hu)
    return rho, hu


# ----------------------------------------------------------------------------- grid design

def _design_grid(anat, coarse, size, oblique, flip, rng_img, centre, scale) -> _Grid:
    """Voxel grid covering the body in-plane and the liver with margins in z (physical LPS).

    A rotated (oblique) grid keeps the plain grid's extents along its own axes, enlarged only as far as
    needed to hold the whole liver with a margin (body corners may be cut, as on a real oblique scan).
    """
    slice_mm = float(np.round(rng_img.uniform(1.5, 2.5) * 4) / 4)
    angles = rng_img.uniform(10, 20, 2) * np.pi / 180 * rng_img.choice([-1, 1], 2)
    zmin, zmax = float(coarse.Z.min()), float(coarse.Z.max())
    qlo = np.array([-anat.body_ax - 6.0, -anat.body_ay_ant - 6.0, zmin - 35.0])
    qhi = np.array([anat.body_ax + 6.0, anat.body_ay_post + 6.0, zmax + 25.0])
    direction = _rotation(angles[0], 0.0, angles[1]) if oblique else np.eye(3)
    if flip:
        direction = direction @ np.diag([-1.0, -1.0, 1.0])

    def box_corners(lo, hi):
        return centre + scale * np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])

    phys = box_corners(qlo, qhi)
    mid = 0.5 * (phys.min(axis=0) + phys.max(axis=0))
    half = 0.5 * (phys.max(axis=0) - phys.min(axis=0))
    pts = coarse.points()
    liver = box_corners(pts.min(axis=0) - 10.0, pts.max(axis=0) + 10.0)
    need = np.abs((liver - mid) @ direction).max(axis=0)  # along the grid axes
    extent = 2.0 * np.maximum(np.abs(direction.T) @ half if not oblique else half, need)
    if size == "small":
        spacing = np.array([2.0, 2.0, 2.5])
        n = np.ceil(extent / spacing).astype(int) + 1
    else:
        inplane = float(np.clip(max(extent[0], extent[1]) / 511.0, 0.70, 0.82))
        spacing = np.array([inplane, inplane, slice_mm])
        n = np.array([512, 512, int(np.ceil(extent[2] / slice_mm)) + 1])
    half = (n - 1) * spacing / 2.0
    origin = mid - direction @ half
    return _Grid(tuple(int(v) for v in n), tuple(float(s) for s in spacing), origin, direction,
                 np.asarray(centre, float), float(scale))


# ----------------------------------------------------------------------------- rendering

# Native (unenhanced) HU of the enhancing tissues and their portal-venous HU at a typical enhancement (factor 1):
# every enhancing tissue is native + factor x (typical - native), so a weakly enhanced scan is weak everywhere.
_ENHANCING = {"liver": (55.0, (100.0, 110.0)), "portal": (40.0, (150.0, 160.0)), "hepatic": (40.0, (140.0, 150.0)),
              "ivc": (40.0, (142.0, 155.0)), "aorta": (40.0, (170.0, 190.0)), "spleen": (45.0, (110.0, 120.0)),
              "kidney_cortex": (35.0, (150.0, 180.0)), "kidney_medulla": (35.0, (100.0, 120.0)),
              "heart": (40.0, (130.0, 150.0)), "myocardium": (45.0, (95.0, 110.0)), "pancreas": (40.0, (90.0, 110.0)),
              "bowel": (35.0, (30.0, 60.0)), "stomach_wall": (40.0, (70.0, 95.0))}
WEAK_PARENCHYMA_CHANCE = 0.25  # scans whose parenchyma is only 60-80 HU (steatosis, poor uptake), with strong noise
STRONG_NOISE_CHANCE = 0.2      # other scans with strong noise (25-35 HU)


def _hu_params(rng):
    """HU of every tissue, the enhancement factor and the noise sd of one scan. Enhancement varies between
    patients and protocols: factor 0.8-1.25 (parenchyma about 95-125 HU, portal vein 145-190 HU); with
    `WEAK_PARENCHYMA_CHANCE` the parenchyma is only 60-80 HU (a fatty liver, or one that takes up little contrast)
    while the blood pool still enhances (factor 0.5-1), and the noise is strong (25-35 HU, as in large or
    low-dose patients); otherwise noise is 15-25 HU, 25-35 with `STRONG_NOISE_CHANCE`."""
    u = rng.uniform
    weak = rng.random() < WEAK_PARENCHYMA_CHANCE
    factor = u(0.5, 1.0) if weak else u(0.8, 1.25)
    prm = {key: native + factor * (u(*typical) - native) for key, (native, typical) in _ENHANCING.items()}
    if weak:
        prm["liver"] = u(60.0, 80.0)
    noisy = weak or rng.random() < STRONG_NOISE_CHANCE
    prm.update({"muscle": u(45.0, 58.0), "fat": u(-110.0, -90.0), "gb": u(5.0, 15.0), "stomach_fluid": u(10.0, 25.0),
                "lung": u(-880.0, -820.0), "noise": u(25.0, 35.0) if noisy else u(15.0, 25.0),
                "cancellous": u(180.0, 280.0), "cortical": u(700.0, 950.0), "rib": u(450.0, 700.0),
                "enhancement": factor})
    return prm


def _render_body(grid, anat, hu, prm):
    """Paint everything that is not liver, vessel or lesion into hu (float32, [z, y, x])."""
    full = (slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, grid.shape[2]))
    for sl in grid.chunks(full, 2_500_000):
        X, Y, Z = grid.coords(sl)
        shape = tuple(s.stop - s.start for s in sl)
        X, Y, Z = (_full(a, shape) for a in (X, Y, Z))
        h = np.full(shape, -1000.0, np.float32)
        kb = anat.body_k(X, Y)
        body = kb < 1.0
        h[body] = prm["fat"]
        h[body & (anat.body_k(X, Y, 1.5) >= 1.0)] = prm["muscle"] - 20  # skin
        mus = (anat.body_k(X, Y, anat.fat) < 1.0)
        h[mus] = prm["muscle"]
        cav_sd = anat.cavity_sd(X, Y)
        cav = cav_sd < 0
        fat_tex = _smooth_field(grid, sl, lambda x, y, z: _waves(x, y, z, anat.fat_waves), 4.0)
        h[cav] = (prm["fat"] + fat_tex)[cav]
        zd = anat.z_dia(X, Y)
        thorax = cav & (Z > zd + 1.0)
        h[thorax] = prm["lung"]
        dia = cav & (Z > zd - 5.0) & (Z <= zd + 1.0)
        h[dia] = prm["muscle"]
        # bowel loops below the liver
        bw = _smooth_field(grid, sl, lambda x, y, z: _waves(x, y, z, anat.bowel_waves), 3.0)
        bowel = cav & (Z < zd - 40.0) & (bw > 0.35) & (Y < 40)
        h[bowel] = prm["bowel"]
        h[bowel & (bw > 1.3) & (Y < -30)] = -950.0
        # ribs: oblique bands in the wall, descending anteriorly, absent at the anterior midline
        uu = (Y + anat.body_ay_ant) / (anat.body_ay_ant + anat.body_ay_post)
        zr = Z + anat.rib_drop * np.clip(1.0 - uu, 0.0, 1.0) ** 1.4
        ph = ((zr / anat.rib_pitch + anat.rib_phase) % 1.0) * anat.rib_pitch  # mm within one rib period
        e = ((ph - 6.0) / 6.0) ** 2 + ((cav_sd - 4.5) / 4.0) ** 2  # rib cross-section: 12 mm tall, 8 mm thick
        ribs = (e < 1.0) & (zr > -75.0) & ~((np.abs(X) < 45) & (Y < 0))
        h[ribs] = prm["rib"]
        h[ribs & (e > 0.55)] = prm["cortical"]
        # spine and back muscles
        for sx in (-1.0, 1.0):
            pm = ((X - sx * 34.0) / 27.0) ** 2 + ((Y - 100.0) / 24.0) ** 2 < 1.0
            h[pm & body] = prm["muscle"]
            ps = (((X - sx * 36.0) / 15.0) ** 2 + ((Y - 58.0) / 15.0) ** 2 < 1.0) & (Z < -40.0)
            h[ps] = prm["muscle"]
        vb = ((X / 22.0) ** 2 + ((Y - 62.0) / 18.0) ** 2)
        disc = ((Z / 31.0 + 0.3) % 1.0) < 0.18
        h[vb < 1.0] = prm["cancellous"]
        h[(vb < 1.0) & (vb > 0.78)] = prm["cortical"]
        h[(vb < 1.0) & disc] = 85.0
        canal = (X / 9.0) ** 2 + ((Y - 90.0) / 8.0) ** 2
        arch = (canal >= 1.0) & ((X / 16.0) ** 2 + ((Y - 92.0) / 15.0) ** 2 < 1.0) & (Y > 80.0)
        spinous = (np.abs(X) < 4.5) & (Y > 95.0) & (Y < 114.0)
        h[arch | spinous] = prm["rib"]
        h[canal < 1.0] = 25.0
        hu[sl] = h


def _paint_ellipsoid_organs(grid, anat, hu, prm):
    """Kidneys, spleen, stomach, gallbladder, heart, pancreas, colon, aorta."""
    def region(centre, radii, pad=4.0):
        r = float(np.max(radii)) + pad
        return grid.box(np.asarray(centre) - r, np.asarray(centre) + r)

    def each(centre, radii):
        sl = region(centre, radii)
        if sl is None:
            return
        for s in grid.chunks(sl):
            X, Y, Z = grid.coords(s)
            shape = tuple(v.stop - v.start for v in s)
            yield s, [_full(a, shape) for a in (X, Y, Z)]

    for right in (True, False):
        c = anat.kid_r_c if right else anat.kid_l_c
        rot = anat.kid_rot_r if right else anat.kid_rot_l
        for s, (X, Y, Z) in each(c, anat.kid_r):
            k = _ellipsoid_k(X, Y, Z, c, anat.kid_r, rot)
            h = hu[s]
            h[k < 1.0] = prm["kidney_cortex"]
            h[k < 0.62] = prm["kidney_medulla"]
            h[k < 0.3] = -40.0  # sinus fat
    for s, (X, Y, Z) in each(anat.spleen_c, anat.spleen_r):
        k = _ellipsoid_k(X, Y, Z, anat.spleen_c, anat.spleen_r, anat.spleen_rot)
        hu[s][(k < 1.0) & (anat.cavity_sd(X, Y) < -1.0) & (Z < anat.z_dia(X, Y) - 5.0)] = prm["spleen"]
    for s, (X, Y, Z) in each(anat.stomach_c, anat.stomach_r):
        k = _ellipsoid_k(X, Y, Z, anat.stomach_c, anat.stomach_r, anat.stomach_rot)
        inside = (k < 1.0) & (Z < anat.z_dia(X, Y) - 5.0)
        h = hu[s]
        h[inside] = prm["stomach_wall"]
        lumen = inside & (k < 1.0 - 5.0 / float(min(anat.stomach_r)))
        h[lumen] = prm["stomach_fluid"]
        air_level = anat.stomach_c[1] - anat.stomach_r[1] * (1.0 - 2 * anat.stomach_air)
        h[lumen & (Y < air_level)] = -1000.0
    for s, (X, Y, Z) in each(anat.gb_c, anat.gb_r):
        k = _ellipsoid_k(X, Y, Z, anat.gb_c, anat.gb_r, anat.gb_rot)
        h = hu[s]
        h[k < 1.0] = prm["muscle"]
        h[k < 1.0 - 2.0 / float(min(anat.gb_r))] = prm["gb"]
    for s, (X, Y, Z) in each(anat.heart_c, anat.heart_r):
        k = _ellipsoid_k(X, Y, Z, anat.heart_c, anat.heart_r)
        above = Z > anat.z_dia(X, Y) + 1.0
        h = hu[s]
        h[(k < 1.0) & above] = prm["myocardium"]
        h[(k < 0.8) & above] = prm["heart"]
    for path, radius, value in ((anat.panc_path, 12.0, prm["pancreas"]), (anat.colon_path, 22.0, None)):
        for a, b in zip(path[:-1], path[1:]):
            for s, (X, Y, Z) in each(0.5 * (a + b), np.abs(b - a) / 2 + radius):
                d = _segment_distance(X, Y, Z, a, b)
                h = hu[s]
                if value is not None:
                    h[d < radius] = value
                else:
                    h[d < radius] = prm["bowel"] - 10.0
                    h[d < radius - 3.0] = -900.0
    # aorta: the whole field
    lo = np.array([anat.aorta_xy[0] - anat.aorta_r - 3, anat.aorta_xy[1] - anat.aorta_r - 3, -400.0])
    hi = np.array([anat.aorta_xy[0] + anat.aorta_r + 3, anat.aorta_xy[1] + anat.aorta_r + 3, 400.0])
    sl = grid.box(lo, hi)
    if sl is not None:
        for s in grid.chunks(sl):
            X, Y, Z = grid.coords(s)
            shape = tuple(v.stop - v.start for v in s)
            d = np.sqrt((_full(X, shape) - anat.aorta_xy[0]) ** 2 + (_full(Y, shape) - anat.aorta_xy[1]) ** 2)
            hu[s][d < anat.aorta_r] = prm["aorta"]


def _segment_distance(X, Y, Z, a, b):
    ab = np.asarray(b, float) - np.asarray(a, float)
    L2 = float(ab @ ab) + 1e-9
    t = np.clip(((X - a[0]) * ab[0] + (Y - a[1]) * ab[1] + (Z - a[2]) * ab[2]) / L2, 0.0, 1.0)
    return np.sqrt((X - a[0] - t * ab[0]) ** 2 + (Y - a[1] - t * ab[1]) ** 2 + (Z - a[2] - t * ab[2]) ** 2)


def _render_liver(grid, anat, coarse, hu, tissue, couinaud, prm, liver_waves):
    """Liver parenchyma, its truth and Couinaud labels; the surface is found on a sub-sampled grid and refined
    exactly wherever the interpolated signed distance is within a safety margin of zero."""
    pts = coarse.points()
    sl = grid.box(pts.min(axis=0) - 2 * _COARSE_MM, pts.max(axis=0) + 2 * _COARSE_MM)
    if sl is None:
        return
    step = _field_step(grid, 2.5)
    margin = 2.0 * max(grid.spacing[ax] * st for ax, st in zip_equal((2, 1, 0), step)) / grid.scale + 1.0
    for s in grid.chunks(sl, 2_000_000):
        shape = tuple(v.stop - v.start for v in s)
        sd = _smooth_field(grid, s, anat.liver_sd, 2.5)
        near = np.abs(sd) < margin
        if near.any():
            X, Y, Z = (_full(a, shape) for a in grid.coords(s))
            sd[near] = anat.liver_sd(X[near], Y[near], Z[near])
        inside = sd < 0
        if not inside.any():
            continue
        X, Y, Z = (_full(a, shape) for a in grid.coords(s))
        x, y, z = X[inside], Y[inside], Z[inside]
        tex = _smooth_field(grid, s, lambda a, b, c: _waves(a, b, c, liver_waves), 3.0)
        hu[s][inside] = prm["liver"] + tex[inside]
        tissue[s][inside] = labels.TRUTH_PARENCHYMA
        couinaud[s][inside] = anat.couinaud(x, y, z)


def _render_lesions(grid, anat, specs, hu, tissue, lesion_ids, couinaud, prm):
    """Paint each lesion into the liver; a bulging one also into the fat round the liver (its Couinaud label:
    the nearest liver voxel's). Earlier lesions keep their voxels (satellites touch, never overlap)."""
    from scipy import ndimage

    for n, spec in enumerate(specs, start=1):
        r = spec["rmax"] * 1.5 + 2.0
        sl = grid.box(spec["centre"] - r, spec["centre"] + r)
        if sl is None:
            continue
        X, Y, Z = grid.coords(sl)
        shape = tuple(v.stop - v.start for v in sl)
        X, Y, Z = (_full(a, shape) for a in (X, Y, Z))
        rho, val = _lesion_values(spec, X, Y, Z, prm)
        inside = (rho < 1.0) & (tissue[sl] == labels.TRUTH_PARENCHYMA)
        if spec.get("bulge"):
            out = (rho < 1.0) & (tissue[sl] == 0) & (hu[sl] < -50.0)  # fat round the liver, not another organ
            liver_here = couinaud[sl] > 0
            if out.any() and liver_here.any():
                _, nearest = ndimage.distance_transform_edt(~liver_here, return_indices=True)
                couinaud[sl][out] = couinaud[sl][tuple(nearest[:, out])]
                inside |= out
        hu[sl][inside] = val[inside]
        tissue[sl][inside] = labels.TRUTH_LESION
        lesion_ids[sl][inside] = n


def _render_vessels(grid, tubes, vessel):
    rmin = 0.5 * max(grid.spacing) / grid.scale
    for tube in tubes:
        pts, radii = tube.points, np.maximum(tube.radii, rmin)
        for a, b, ra, rb in zip_equal(pts[:-1], pts[1:], radii[:-1], radii[1:]):
            rm = max(ra, rb) + 0.5
            sl = grid.box(np.minimum(a, b) - rm, np.maximum(a, b) + rm)
            if sl is None:
                continue
            X, Y, Z = grid.coords(sl)
            ab = b - a
            L2 = float(ab @ ab) + 1e-9
            t = np.clip(((X - a[0]) * ab[0] + (Y - a[1]) * ab[1] + (Z - a[2]) * ab[2]) / L2, 0.0, 1.0)
            d2 = (X - a[0] - t * ab[0]) ** 2 + (Y - a[1] - t * ab[1]) ** 2 + (Z - a[2] - t * ab[2]) ** 2
            rr = ra + t * (rb - ra)
            inside = np.broadcast_to(d2 < rr * rr, tuple(v.stop - v.start for v in sl))
            vessel[sl][inside] = tube.label


def _keep_connected(vessel, labels_in_tree, keep_label_points):
    """Keep the one 6-connected component of a vessel tree that holds the given voxels; drop the rest."""
    from scipy import ndimage

    tree = np.isin(vessel, labels_in_tree)
    comp, n = ndimage.label(tree)
    if n <= 1:
        return
    ids = [comp[p] for p in keep_label_points if comp[p] > 0]
    if ids:
        keep = np.bincount(ids).argmax()
    else:
        keep = np.bincount(comp.ravel())[1:].argmax() + 1
    vessel[tree & (comp != keep)] = 0


# ----------------------------------------------------------------------------- public API

def generate_phantom(seed: int = 0, size: str = "small", oblique: bool = False, flip: bool = False,
                     n_lesions: int | None = None, lesion_kinds: Sequence[str] | None = None,
                     progress: Progress | None = None) -> Phantom:
    """Generate a synthetic portal-venous liver CT with ground truth; deterministic by seed.

    Parameters
    ----------
    seed: anatomy, lesions and noise all follow from it (bitwise reproducible).
    size: 'small' (2 x 2 x 2.5 mm voxels, whole body cross-section, liver with margins in z) or
        'full' (512 x 512 in plane at 0.70-0.82 mm, slices 1.5-2.5 mm chosen by seed).
    oblique: store with a direction matrix rotated 10-20 degrees about two axes (anatomy unchanged).
    flip: store with axes x and y reversed (direction diag(-1, -1, 1), like a RAS-ordered NIfTI).
    n_lesions: number of lesions (0-12); None draws 0-6 by seed (most seeds get at least 2).
    lesion_kinds: kinds to draw from (subset of labels.LESION_KINDS); default all four.
    progress: callback(fraction 0..1, message).

    Returns a Phantom; label maps share the CT's geometry exactly, landmarks are LPS mm, lesion
    centroids RAS mm (boundary convention), volumes in ml, diameters are equivalent-sphere diameters in mm.
    """
    if size not in SIZES:
        raise InputError(f"size must be 'small' or 'full', not {size!r}.")
    kinds = tuple(lesion_kinds) if lesion_kinds is not None else labels.LESION_KINDS
    bad = [k for k in kinds if k not in labels.LESION_KINDS]
    if bad or not kinds:
        raise InputError(f"lesion_kinds must be a non-empty subset of {labels.LESION_KINDS}; got {list(kinds)}.")
    if n_lesions is not None and not (0 <= int(n_lesions) <= 12):
        raise InputError(f"n_lesions must be between 0 and 12, not {n_lesions}.")
    report = progress or (lambda f, m: None)
    ss = np.random.SeedSequence([int(seed), 20261128])
    rng_anat, rng_les, rng_img, rng_hu, rng_noise = (np.random.default_rng(s) for s in ss.spawn(5))
    noise_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 20261128, SIZES.index(size)]))

    report(0.0, "anatomy")
    anat = _Anatomy(rng_anat)
    coarse = _Coarse(anat)
    labels_coarse = _calibrate(anat, coarse)
    target_ml = float(rng_anat.uniform(1300.0, 2050.0))
    scale = (target_ml / coarse.volume_ml()) ** (1.0 / 3.0)
    report(0.1, "vessels")
    tubes, marks_q = _build_vessels(anat, coarse, labels_coarse, scale)
    if n_lesions is None:
        n_lesions = int(rng_les.choice(7, p=[0.07, 0.11, 0.2, 0.2, 0.18, 0.13, 0.11]))
    specs = _place_lesions(anat, coarse, tubes, rng_les, int(n_lesions), kinds, scale)
    prm = _hu_params(rng_hu)
    liver_waves = _random_waves(rng_hu, 5, (15.0, 60.0), rng_hu.uniform(2.0, 4.0))
    centre = np.array([rng_img.uniform(-15, 15), rng_img.uniform(-20, 20), rng_img.uniform(-250, -80)])
    grid = _design_grid(anat, coarse, size, oblique, flip, rng_img, centre, scale)

    report(0.2, "body and organs")
    shape = grid.shape
    hu = np.empty(shape, np.float32)
    _render_body(grid, anat, hu, prm)
    _paint_ellipsoid_organs(grid, anat, hu, prm)
    report(0.45, "liver")
    tissue = np.zeros(shape, np.uint8)
    couinaud = np.zeros(shape, np.uint8)
    lesion_ids = np.zeros(shape, np.uint16)
    _render_liver(grid, anat, coarse, hu, tissue, couinaud, prm, liver_waves)
    report(0.6, "lesions and vessels")
    _render_lesions(grid, anat, specs, hu, tissue, lesion_ids, couinaud, prm)
    vessel = np.zeros(shape, np.uint8)
    _render_vessels(grid, tubes, vessel)
    ivc_idx = _index_of(grid, grid.to_physical(marks_q["IVC"]))
    pv_idx = _index_of(grid, grid.to_physical(marks_q["RPV"]))
    _keep_connected(vessel, [labels.TRUTH_HEPATIC_VEIN, labels.TRUTH_IVC], [ivc_idx])
    _keep_connected(vessel, [labels.TRUTH_PORTAL_VEIN], [pv_idx])
    is_v = vessel > 0
    for lab, key in ((labels.TRUTH_HEPATIC_VEIN, "hepatic"), (labels.TRUTH_PORTAL_VEIN, "portal"), (labels.TRUTH_IVC, "ivc")):
        hu[vessel == lab] = prm[key]
    tissue[is_v] = vessel[is_v]
    lesion_ids[is_v] = 0
    couinaud[vessel == labels.TRUTH_IVC] = 0
    del is_v, vessel

    report(0.75, "partial volume and noise")
    clean_img = grid.image(hu)
    del hu
    sigma = [math.sqrt((0.35 * s) ** 2 + 0.6**2) for s in grid.spacing]
    clean_img = sitk.SmoothingRecursiveGaussian(clean_img, sigma)
    noise = noise_rng.standard_normal(shape, dtype=np.float32)
    noise_img = grid.image(noise)
    del noise
    noise_img = sitk.SmoothingRecursiveGaussian(noise_img, [0.6 * min(grid.spacing[:2])] * 2 + [0.3 * grid.spacing[2]])
    noise = sitk.GetArrayFromImage(noise_img)
    del noise_img
    noise *= np.float32(prm["noise"] / float(noise[:: max(1, shape[0] // 8)].std()))
    clean = sitk.GetArrayViewFromImage(clean_img)
    ct = np.clip(np.rint(clean + noise), -1024, 3071).astype(np.int16)
    del noise
    ct_img = grid.image(ct)
    del ct

    report(0.9, "ground truth tables")
    lesion_ids, specs = _renumber(lesion_ids, specs)
    tissue_img = grid.image(tissue)
    couinaud_img = grid.image(couinaud)
    lesions_img = grid.image(lesion_ids)
    vox_ml = float(np.prod(grid.spacing)) / 1000.0
    liver_ml = float(np.count_nonzero(couinaud)) * vox_ml
    rows = _lesion_rows(lesion_ids, couinaud, specs, grid, vox_ml)
    landmarks = {k: grid.to_physical(marks_q[k]) for k in labels.LANDMARK_NAMES if k in marks_q}
    counts = np.bincount(couinaud.ravel(), minlength=9)[1:9].astype(float)
    info = {"scale": grid.scale, "couinaud_fractions": {labels.COUINAUD_ROMAN[k]: float(counts[k - 1] / counts.sum())
                                                        for k in range(1, 9)},
            "oblique": bool(oblique), "flip": bool(flip), "hu": {k: round(float(v), 1) for k, v in prm.items()}}
    report(1.0, "done")
    return Phantom(ct=ct_img, ct_clean=clean_img, truth_tissue=tissue_img, truth_couinaud=couinaud_img,
                   truth_lesions=lesions_img, lesions=rows, landmarks=landmarks, seed=int(seed), size=size,
                   liver_volume_ml=liver_ml, info=info)


def _index_of(grid, p):
    q = (np.asarray(p) - grid.origin) @ np.linalg.inv(grid.direction * np.asarray(grid.spacing)[None]).T
    i = np.clip(np.rint(q).astype(int), 0, np.asarray(grid.size) - 1)
    return (int(i[2]), int(i[1]), int(i[0]))


def _renumber(lesion_ids, specs):
    """Drop lesions left with no voxels and number the rest 1..n in order."""
    counts = np.bincount(lesion_ids.ravel(), minlength=len(specs) + 1)
    keep = [i for i in range(1, len(specs) + 1) if counts[i] > 0]
    if len(keep) == len(specs):
        return lesion_ids, specs
    lut = np.zeros(len(specs) + 1, np.uint16)
    for new, old in enumerate(keep, start=1):
        lut[old] = new
    return lut[lesion_ids], [specs[i - 1] for i in keep]


def _lesion_rows(lesion_ids, couinaud, specs, grid, vox_ml):
    from scipy import ndimage

    rows = []
    if not specs:
        return rows
    n = len(specs)
    idx = np.arange(1, n + 1)
    objs = ndimage.find_objects(lesion_ids, max_label=n)
    m = grid.direction * np.asarray(grid.spacing)[None]
    for i, spec in zip(idx, specs):  # idx is 1..len(specs)
        sl = objs[i - 1]
        sub = lesion_ids[sl] == i
        zyx = np.argwhere(sub) + np.array([s.start for s in sl])
        cen = grid.origin + m @ zyx.mean(axis=0)[::-1]
        segs = couinaud[sl][sub]
        cnt = np.bincount(segs, minlength=9)[1:9].astype(float)
        frac = cnt / max(cnt.sum(), 1.0)
        vol = float(sub.sum()) * vox_ml
        rows.append({
            "id": int(i), "kind": spec["kind"], "malignant": spec["kind"] in labels.MALIGNANT_KINDS,
            "volume_ml": round(vol, 4), "diameter_mm": round((6.0 * vol * 1000.0 / math.pi) ** (1 / 3), 2),
            "centroid_ras": [round(float(v), 3) for v in lps_to_ras(cen)],
            "couinaud_fractions": {labels.COUINAUD_ROMAN[k]: round(float(frac[k - 1]), 4) for k in range(1, 9)},
            "main_segment": labels.COUINAUD_ROMAN[int(np.argmax(cnt)) + 1],
        })
    return rows


PHANTOM_GENERATOR = "LiverLocalizationLib.phantom"
PHANTOM_FILES = ("ct.nii.gz", "truth_tissue.nii.gz", "truth_couinaud.nii.gz", "truth_lesions.nii.gz",
                 "landmarks.mrk.json", "truth.json")


def _phantom_truth(folder: Path) -> dict | None:
    """The folder's truth.json when `write_phantom` wrote it (it names the generator), else None."""
    try:
        doc = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("generator") == PHANTOM_GENERATOR else None


def files_not_written_by_phantom(folder) -> list[str]:
    """Names of the files `write_phantom` would replace in `folder` that it did not write itself.

    A file is the phantom's own when the folder's truth.json, written by `write_phantom`, records its SHA-256
    (truth.json itself when it names the generator): a user's ct.nii.gz, or a phantom file edited since, is
    never replaced. Files of other names are never touched."""
    folder = Path(folder)
    present = [name for name in PHANTOM_FILES if (folder / name).exists()]
    if not present:
        return []
    truth = _phantom_truth(folder)
    recorded = truth.get("files", {}) if truth is not None else {}
    recorded = recorded if isinstance(recorded, dict) else {}
    return [name for name in present if not (
        (name == "truth.json" and truth is not None)
        or ((folder / name).is_file() and recorded.get(name) == file_sha256(folder / name)))]


def phantom_folder_problem(folder) -> str | None:
    """Why `folder` cannot be scored against as a phantom's ground truth (None when it can): it must hold the
    truth.json, truth_couinaud.nii.gz and truth_lesions.nii.gz that `write_phantom` writes."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} is not a folder" if folder.exists() else f"{folder}: no such folder"
    missing = [n for n in ("truth.json", "truth_couinaud.nii.gz", "truth_lesions.nii.gz") if not (folder / n).is_file()]
    if missing:
        return f"{folder} is not a phantom folder (no {', '.join(missing)})"
    if _phantom_truth(folder) is None:
        return f"{folder}/truth.json was not written by `liverloc phantom` (no generator {PHANTOM_GENERATOR!r})"
    return None


def write_phantom(phantom: Phantom, out_dir) -> dict[str, Path]:
    """Write a phantom to a folder: ct.nii.gz (int16 HU), truth_*.nii.gz, truth.json, landmarks.mrk.json (LPS).

    truth.json, written last, records the SHA-256 of every other file, so that a later `liverloc phantom` into
    the folder can tell its own files from a user's (`files_not_written_by_phantom`)."""
    from . import io

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "ct": io.write_image(phantom.ct, out / "ct.nii.gz"),
        "truth_tissue": io.write_image(phantom.truth_tissue, out / "truth_tissue.nii.gz"),
        "truth_couinaud": io.write_image(phantom.truth_couinaud, out / "truth_couinaud.nii.gz"),
        "truth_lesions": io.write_image(phantom.truth_lesions, out / "truth_lesions.nii.gz"),
    }
    paths["landmarks"] = io.write_markups(out / "landmarks.mrk.json", phantom.landmarks, "LPS")
    cou = sitk.GetArrayViewFromImage(phantom.truth_couinaud)
    counts = np.bincount(cou.ravel(), minlength=9)[1:9].astype(float)
    doc = {
        "generator": PHANTOM_GENERATOR,
        "seed": phantom.seed, "size": phantom.size,
        "spacing": list(phantom.ct.GetSpacing()), "size_voxels": list(phantom.ct.GetSize()),
        "origin": list(phantom.ct.GetOrigin()), "direction": list(phantom.ct.GetDirection()),
        "liver_volume_ml": round(phantom.liver_volume_ml, 3),
        "couinaud_fractions": {labels.COUINAUD_ROMAN[k]: round(float(counts[k - 1] / max(counts.sum(), 1)), 5)
                               for k in range(1, 9)},
        "lesions": phantom.lesions,
        "landmarks_lps": {k: [round(float(v), 4) for v in p] for k, p in phantom.landmarks.items()},
        "tissue_labels": {"0": "background", str(labels.TRUTH_PARENCHYMA): "liver parenchyma",
                          str(labels.TRUTH_LESION): "lesion", str(labels.TRUTH_HEPATIC_VEIN): "hepatic vein",
                          str(labels.TRUTH_PORTAL_VEIN): "portal vein", str(labels.TRUTH_IVC): "inferior vena cava"},
        "oblique": phantom.info.get("oblique", False), "flip": phantom.info.get("flip", False),
        "files": {p.name: file_sha256(p) for p in paths.values()},
    }
    paths["truth"] = out / "truth.json"
    paths["truth"].write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return paths
