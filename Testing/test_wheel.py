"""The package as `pip install .` (not editable) installs it: the wheel holds the classifier weights, and the CLI
run from that wheel alone classifies lesions with them (issue 26, part 5).

The wheel is built offline from a copy of the build inputs (setuptools from this environment,
--no-build-isolation, so nothing is downloaded and the checkout gets no build/ or egg-info) and installed with
--no-deps into a fresh virtual environment. That environment reaches the dependencies (numpy, torch,
SimpleITK, ...) through a .pth file listing this environment's site-packages folders: paths added by a .pth
line are not scanned for .pth files themselves, so this environment's editable install of the project
(its __editable__ .pth or finder) is not active there, and the fresh site-packages comes first on sys.path
anyway. The test asserts that LiverLocalizationLib is imported from the fresh environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from LiverLocalizationLib import labels

ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGE = ROOT / "LiverLocalization" / "LiverLocalizationLib"
SHIPPED_MODEL = ROOT / "LiverLocalization" / "Resources" / "Models"
WEIGHTS = "lesion_classifier.safetensors"
CARD = "lesion_classifier.json"
# Everything the setuptools build reads (pyproject's readme, license-files and package-dir)
BUILD_INPUTS = ["pyproject.toml", "README.md", "LICENSE", "setup.py", "setup.cfg", "MANIFEST.in"]

def _run(cmd, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _isolated_env(venv: Path) -> dict:
    """Environment for commands in the fresh venv: nothing from PYTHONPATH or the user's site-packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", MPLBACKEND="Agg")
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built as `pip wheel .` builds it, without network."""
    try:
        import setuptools
    except ImportError:
        pytest.skip("setuptools is not installed here, so the wheel cannot be built offline "
                    "(pip install -e '.[test]' installs it)")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} is older than pyproject's build requirement (>=77)")
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "LiverLocalization", src / "LiverLocalization",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build"))
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", "-w", dist], cwd=src)
    wheels = sorted(dist.glob("liverlocalization-*.whl"))
    assert len(wheels) == 1, f"expected one liverlocalization wheel in {dist}, found {os.listdir(dist)}"
    return wheels[0]


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new virtual environment holding the wheel; dependencies only through a .pth (see the module docstring)."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent)
    purelib = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, env=_isolated_env(venv)).stdout.strip()
    ours = [p for p in dict.fromkeys(sys.path) if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    assert ours, f"no site-packages folder on this interpreter's sys.path: {sys.path}"
    (Path(purelib) / "_liverloc_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    # pip comes from this environment's site-packages through the .pth; it installs into the fresh venv
    _run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=venv.parent, env=_isolated_env(venv))
    return venv


def test_wheel_holds_the_package_and_the_shipped_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for weights_or_card in (WEIGHTS, CARD):
        assert f"LiverLocalizationLib/models/{weights_or_card}" in names, (
            f"{wheel.name} lacks the shipped {weights_or_card}: `pip install .` would give a CLI without a model")
    in_source = {p.relative_to(SOURCE_PACKAGE.parent).as_posix() for p in SOURCE_PACKAGE.rglob("*.py")}
    assert in_source <= names, f"modules missing from the wheel: {sorted(in_source - names)}"


def test_installed_wheel_runs_a_phantom_with_the_shipped_classifier(fresh_venv, tmp_path):
    env = _isolated_env(fresh_venv)
    where = _run([fresh_venv / "bin" / "python", "-c",
                  "import LiverLocalizationLib, LiverLocalizationLib.classifier as c; "
                  "print(LiverLocalizationLib.__file__); print(c.DEFAULT_WEIGHTS)"], cwd=tmp_path, env=env)
    package_file, default_weights = (Path(line) for line in where.stdout.split())
    assert fresh_venv.resolve() in package_file.resolve().parents, (
        f"LiverLocalizationLib was imported from {package_file}, not from the wheel installed in {fresh_venv}")
    assert fresh_venv.resolve() in default_weights.resolve().parents, (
        f"the default weights {default_weights} are not the wheel's copy in {fresh_venv}")

    liverloc = fresh_venv / "bin" / "liverloc"
    _run([liverloc, "--quiet", "phantom", "--out", "P", "--seed", "13", "--size", "small"], cwd=tmp_path, env=env)
    _run([liverloc, "--quiet", "run", "P/ct.nii.gz", "--landmarks", "P/landmarks.mrk.json", "--out", "R",
          "--no-figures"], cwd=tmp_path, env=env)

    report = json.loads((tmp_path / "R" / "report.json").read_text())
    assert report["lesions"], "the phantom's lesions were not found, so the classifier was not exercised"
    for lesion in report["lesions"]:
        assert lesion.get("kind") in labels.LESION_KINDS, lesion
        assert 0.0 <= lesion["malignant_probability"] <= 1.0, lesion
    shipped_sha256 = hashlib.sha256((SHIPPED_MODEL / WEIGHTS).read_bytes()).hexdigest()
    recorded = json.loads((tmp_path / "R" / "run.json").read_text())["inputs"]["--weights"]
    assert recorded["sha256"] == shipped_sha256, recorded
    assert Path(recorded["path"]).resolve() == default_weights.resolve(), recorded
