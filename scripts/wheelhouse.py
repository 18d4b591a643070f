"""Download, once, the wheels the dependency installer takes on this machine's QGIS Python (make setup).

    env -u PYTHONPATH /usr/bin/python3 scripts/wheelhouse.py .wheelhouse

The plan comes from the installer itself (``forest_carbon_plugin.core.dependencies.plan_install``: what
QGIS's Python lacks, resolved with everything it has pinned), so tests/gui/test_installer.py can install the
same set into a fresh profile from a package index on 127.0.0.1 that serves only this folder. pip's own
configuration (index, find-links) is used for the download. A second run with the same plan downloads nothing.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forest_carbon_plugin.core import dependencies  # noqa: E402


def _canonical(requirement: str) -> str:
    name, _, version = requirement.partition("==")
    return re.sub(r"[-_.]+", "-", name).lower() + "==" + version


def main(out: Path) -> int:
    missing = dependencies.missing_dependencies()
    if not missing:
        print(f"wheelhouse: {sys.executable} lacks no dependency; nothing to download")
        return 0
    python = dependencies.matching_python() or sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        plan = dependencies.plan_install(missing, Path(tmp) / "target", python=python, log=lambda _line: None)
    out.mkdir(parents=True, exist_ok=True)
    wanted = out / "plan.txt"
    text = "".join(f"{r}\n" for r in sorted(plan.requirements))
    if wanted.is_file() and wanted.read_text() == text:
        print(f"wheelhouse: {out} is up to date ({len(plan.requirements)} distributions)")
        return 0
    subprocess.run([python, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--only-binary", ":all:", "-d", str(out), *plan.requirements], check=True)
    keep = {_canonical(r) for r in plan.requirements}
    for wheel in out.glob("*.whl"):  # an earlier plan's wheels: the test's index must serve this plan only
        name, version = wheel.name.split("-")[:2]
        if _canonical(f"{name}=={version}") not in keep:
            wheel.unlink()
    wanted.write_text(text)  # written last: an interrupted download is redone
    print(f"wheelhouse: {len(plan.requirements)} distributions in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".wheelhouse"))
