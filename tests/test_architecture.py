"""The import layering holds (tests/architecture.ini, import-linter), and the runtime an app imports pulls in
neither torch nor transformers."""
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("compiler", "passes", "runtime", "targets", "models")


def test_import_contracts(tmp_path):
    # import-linter needs `accelc` as one folder tree; the installed package maps its subpackages to the
    # repository's top-level folders, so the check runs on a copy laid out as installed
    root = tmp_path / "tree" / "accelc"
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "namespace"))
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--config", str(REPO / "tests" / "architecture.ini"), "--no-cache"],
                       cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path / "tree"),
                                                                         "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in r.stdout


def test_runtime_imports_no_torch_or_transformers():
    code = ("import sys; import accelc.runtime.artifact, accelc.runtime.generate, accelc.runtime.chat; "
            "bad = [m for m in ('torch', 'transformers', 'nncf') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-800:]
