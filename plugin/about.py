"""What the project says about itself: its name, version and documentation address.

pyproject.toml is the one place they are written. An installed package (also `pip install -e`,
as scripts/_venv does) reads them from its metadata; a checkout run without installing reads
pyproject.toml beside the package.
"""

import tomllib
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

NAME = "klarna-capture"
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _read() -> tuple[str, str | None]:
    """The version and the documentation URL."""
    try:
        meta = metadata(NAME)
    except PackageNotFoundError:
        return _from_pyproject()
    urls = dict(
        (label.strip().lower(), url.strip())
        for label, _, url in (entry.partition(",") for entry in meta.get_all("Project-URL") or ())
    )
    return meta["Version"], urls.get("documentation")


def _from_pyproject() -> tuple[str, str | None]:
    try:
        project = tomllib.loads(_PYPROJECT.read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown", None  # neither installed nor a checkout: a copied-out package
    urls = {label.lower(): url for label, url in project.get("urls", {}).items()}
    return str(project["version"]), urls.get("documentation")


VERSION, DOCS_URL = _read()
