"""The main job on the bundled sample data, through qgis_process as a user would script it.

For now: package the plugin, install it into a throwaway QGIS profile, run
``forestcarbon:lidarinfo`` on the bundled sample stand and print where the outputs are.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import package, qgis_env  # noqa: E402


def main() -> int:
    out = ROOT / "demo_output"
    out.mkdir(exist_ok=True)
    zip_path = package.build()
    config_dir = ROOT / "build" / "demo_qgis"
    qgis_env.make_profile(zip_path, config_dir)
    sample = ROOT / "resources" / "sample_data" / "sample_stand.laz"
    proc, results = qgis_env.run_algorithm("forestcarbon:lidarinfo", {
        "INPUT": sample,
        "OUTPUT_HTML": out / "sample_stand_info.html",
        "OUTPUT_JSON": out / "sample_stand_info.json",
        "OUTPUT_FOOTPRINTS": out / "sample_stand_footprints.gpkg",
    }, config_dir)
    if proc.returncode != 0 or not results:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        print("demo FAILED: qgis_process could not run forestcarbon:lidarinfo", file=sys.stderr)
        return 1
    summary = json.loads((out / "sample_stand_info.json").read_text())["summary"]
    print(f"qgis_process ran forestcarbon:lidarinfo on {sample.name}: {summary['point_count']:,} points, "
          f"EPSG {summary['crs_epsg']}, classes {summary['classification_counts']}, "
          f"{summary['point_density_per_m2']:.1f} points/m²")
    for key in ("OUTPUT_HTML", "OUTPUT_JSON", "OUTPUT_FOOTPRINTS"):
        print(f"  {key}: {results[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
