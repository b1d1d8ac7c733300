"""`accelc inspect DIR`: the artifact's manifest, readably (or --json)."""
from __future__ import annotations

import json

from .artifact import read_manifest
from .graph import is_past, role_of


def add_parser(sub):
    p = sub.add_parser("inspect", help="show what an artifact holds",
                       description="Print an artifact's manifest: source, target, passes with times and metrics, "
                                   "graphs with input shapes, files with sizes.")
    p.add_argument("artifact", help="artifact directory")
    p.add_argument("--verify", action="store_true", help="also check every file's sha256")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=run)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _shape(s) -> str:
    if isinstance(s, dict):
        s = s.get("shape", s)
    if isinstance(s, (list, tuple)):
        return "[" + ", ".join(str(d) for d in s) + "]"
    return str(s)


def _is_static(graph: dict) -> bool:
    shapes = [v.get("shape", v) if isinstance(v, dict) else v for v in (graph.get("inputs") or {}).values()]
    return bool(shapes) and all(isinstance(s, (list, tuple)) and all(isinstance(d, int) for d in s) for s in shapes)


def format_manifest(m: dict) -> str:
    lines = []
    src, tgt, model = m.get("source", {}), m.get("target", {}), m.get("model", {})
    lines.append(f"format    {m.get('format')} v{m.get('format_version')}, created {m.get('created', '?')}")
    lines.append(f"source    {src.get('name')} ({src.get('format')}, sha256 {str(src.get('sha256', ''))[:12]}...)")
    lines.append(f"target    {tgt.get('name')} (static shapes: {tgt.get('static_shapes')}, devices: "
                 f"{', '.join(tgt.get('devices', []) or ['?'])})")
    if model:
        lines.append("model     " + ", ".join(f"{k} {v}" for k, v in model.items()))
    opts = {k: v for k, v in (m.get("options") or {}).items() if v not in (None, False)}
    if opts:
        lines.append("options   " + ", ".join(f"{k}={v}" for k, v in opts.items()))
    passes = m.get("passes") or []
    lines.append(f"passes    {len(passes)} ({sum(p.get('seconds') or 0 for p in passes):.1f} s)")
    for i, p in enumerate(passes, 1):
        metrics = ", ".join(f"{k}={v}" for k, v in (p.get("metrics") or {}).items() if not isinstance(v, (dict, list)))
        lines.append(f"  {i:>2}. {str(p.get('name', '?')):<22} {p.get('seconds') or 0:>8.2f} s  "
                     f"{'changed' if p.get('changed') else 'no-op  '}  {metrics}")
    graphs = m.get("graphs") or {}
    lines.append(f"graphs    {len(graphs)}")
    for name, g in graphs.items():
        files = ", ".join(f"{k}: {g[k]}" for k in ("onnx", "openvino") if g.get(k))
        extra = ", ".join(f"{k}={g[k]}" for k in ("weights", "layers", "cache", "memory", "memory_layers")
                          if k in g)
        role = role_of(name, g)
        label = name if role == name else f"{name} (role {role})"
        lines.append(f"  {label}: {'all static' if _is_static(g) else 'dynamic'}; {files}" + (f"; {extra}" if extra else ""))
        inputs = g.get("inputs") or {}
        shown = [k for k in inputs if not is_past(k)]
        past = [k for k in inputs if is_past(k)]
        for k in shown:
            lines.append(f"      {k:<16} {_shape(inputs[k])}")
        if past:
            lines.append(f"      {'past_key/value':<16} {_shape(inputs[past[0]])} x {len(past)}")
    files = m.get("files") or {}
    lines.append(f"files     {len(files)} ({_size(sum(f.get('bytes', 0) for f in files.values()))})")
    for rel, f in files.items():
        lines.append(f"  {_size(f.get('bytes', 0)):>10}  {rel}")
    return "\n".join(lines)


def run(args) -> int:
    from .artifact import verify
    m = verify(args.artifact) if args.verify else read_manifest(args.artifact)
    if args.json:
        print(json.dumps(m, indent=1))
    else:
        print(format_manifest(m))
        if args.verify:
            print("verified  every file's sha256 matches")
    return 0
