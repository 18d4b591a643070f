"""Install the packaged plugin into a QGIS profile and enable it (make deploy)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import package, qgis_env  # noqa: E402

if __name__ == "__main__":
    default = Path.home() / ".local" / "share" / "QGIS" / "QGIS3" / "profiles" / "default"
    profile = Path(os.environ.get("QGIS_PROFILE_DIR") or default)
    zip_path = package.build()
    folder = qgis_env.install_zip(zip_path, profile)
    qgis_env.enable_plugin(profile)
    print(f"installed {folder} and enabled it in {profile / 'QGIS' / 'QGIS3.ini'}; restart QGIS")
