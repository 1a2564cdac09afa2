"""The repository stands alone: a clone with nothing beside it has everything the tests read."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Spelled in two pieces, so that this file does not name it itself.
OUTSIDE = "../" + "shared"


def test_no_tracked_file_refers_to_the_folder_beside_the_checkout() -> None:
    git = shutil.which("git")
    assert git is not None, "git lists the tracked files"
    tracked = subprocess.run(
        [git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    referring = [
        name.decode()
        for name in tracked
        if name and OUTSIDE.encode() in (ROOT / name.decode()).read_bytes()
    ]
    assert referring == []


def test_the_vendored_references_name_their_source() -> None:
    notes = (ROOT / "tests/reference/README.md").read_text()
    for path in (ROOT / "tests/reference").rglob("*"):
        if path.is_file() and path.suffix in {".yml", ".json"}:
            assert f"`{path.relative_to(ROOT / 'tests/reference')}`" in notes, path
