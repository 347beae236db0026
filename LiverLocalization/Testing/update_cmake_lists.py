"""Rewrite LiverLocalization/CMakeLists.txt so that it lists every Python file and resource on disk.

Testing/test_slicer_module_files.py fails while a file is missing from the lists; after adding files, run
    .venv/bin/python LiverLocalization/Testing/update_cmake_lists.py
and review the diff (only files meant to ship with the Slicer module belong under LiverLocalization/).
"""

from __future__ import annotations

from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]


def module_files() -> tuple[list[str], list[str]]:
    """(Python files of LiverLocalizationLib, resource files), relative to the module folder, sorted."""
    scripts = sorted(p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "LiverLocalizationLib").rglob("*.py")
                     if "__pycache__" not in p.parts)
    resources = sorted(p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts)
    return scripts, resources


def cmake_text(scripts: list[str], resources: list[str]) -> str:
    lines = [
        "#-----------------------------------------------------------------------------",
        "set(MODULE_NAME LiverLocalization)",
        "",
        "#-----------------------------------------------------------------------------",
        "# Every Python file of the module and of its LiverLocalizationLib package (Testing/test_slicer_module_files.py",
        "# checks that this list matches the files on disk; LiverLocalization/Testing/update_cmake_lists.py rewrites it)",
        "set(MODULE_PYTHON_SCRIPTS",
        "  ${MODULE_NAME}.py",
        *[f"  {s}" for s in scripts],
        "  )",
        "",
        "# Every resource: UI, icons, sample thumbnail, classifier weights and their model cards",
        "set(MODULE_PYTHON_RESOURCES",
        *[f"  {r}" for r in resources],
        "  )",
        "",
        "#-----------------------------------------------------------------------------",
        "slicerMacroBuildScriptedModule(",
        "  NAME ${MODULE_NAME}",
        "  SCRIPTS ${MODULE_PYTHON_SCRIPTS}",
        "  RESOURCES ${MODULE_PYTHON_RESOURCES}",
        "  WITH_GENERIC_TESTS",
        "  )",
        "",
        "#-----------------------------------------------------------------------------",
        "if(BUILD_TESTING)",
        "",
        "  # Register the unittest subclass in the main script as a ctest.",
        "  # Note that the test will also be available at runtime.",
        "  slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)",
        "",
        "  # Additional build-time testing",
        "  add_subdirectory(Testing)",
        "endif()",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    path = MODULE_DIR / "CMakeLists.txt"
    path.write_text(cmake_text(*module_files()), encoding="utf-8")
    print(f"{path}: {len(module_files()[0]) + 1} scripts, {len(module_files()[1])} resources")
