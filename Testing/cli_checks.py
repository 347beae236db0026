"""Checks shared by the tests of the command line: its exit status and stderr, and one clear line of error."""

from __future__ import annotations

from LiverLocalizationLib import cli


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """liverloc's exit status (argparse's SystemExit included) and its stderr."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_clear_line(err: str, *words: str) -> None:
    """stderr holds exactly one non-empty line, no traceback, and every one of `words` in it."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
