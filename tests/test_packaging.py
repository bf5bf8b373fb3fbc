"""The wheel: built without a single setuptools warning, every module and the default bundle inside,
train/ and serve/ only under the package's namespace (squad.train, squad.serve)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_builds_quietly_with_every_module_and_the_default_bundle(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                          "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "warning" not in (out.stdout + out.stderr).lower(), out.stderr
    (wheel,) = tmp_path.glob("aligner_squad-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", "squad", "train", "serve"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    modules = {("squad/" + f if f.startswith(("train/", "serve/")) else f) for f in tracked if f.endswith(".py")}
    assert modules - names == set()
    bundle = {f for f in tracked if f.startswith("squad/bundles/default/")}
    assert bundle and bundle - names == set()
    assert not any(n.startswith(("train/", "serve/")) for n in names)  # no bare top-level modules
