"""A GGUF model through accelc against transformers in another environment (e.g. a newer release that reads
the file correctly): tokenizer ids on fixed texts and greedy tokens on fixed prompts.

    .venv/bin/python scripts/check_gguf_reference.py MODEL.gguf --artifact out/gemma3-fp32 \
        --reference-python /tmp/tf523venv/bin/python --out docs/results/gguf_gemma3_2026-12-02.json

The reference interpreter loads the GGUF with its own transformers (tokenizer and model, fp32, greedy);
accelc's side is the compiled artifact through accelc.load (the runtime's tokenizer and default backend).
Writes raw JSON with the machine, date, commit, command line and both transformers versions.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from provenance import provenance

TEXTS = ["The capital of France is", "Hello world!\n\nNew paragraph,  double  spaces.", "café — 東京 🚀 naïve",
         "1234567890 3.14159 x^2", "   leading", "tabs\tand\rreturns"]
PROMPTS = ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):",
           "The three primary colours are"]

REFERENCE = r"""
import json, sys, torch, transformers
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
p, texts, prompts, n = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()
out = {"transformers": transformers.__version__, "ids": [tok(t)["input_ids"] for t in texts], "greedy": []}
for prompt in prompts:
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        g = model.generate(ids, max_new_tokens=n, do_sample=False)
    out["greedy"].append({"prompt_ids": ids[0].tolist(), "tokens": g[0, ids.shape[1]:].tolist()})
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--reference-python", required=True)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    r = subprocess.run([args.reference_python, "-c", REFERENCE, str(args.gguf), json.dumps(TEXTS), json.dumps(PROMPTS),
                        str(args.new_tokens)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    ref = json.loads(r.stdout.strip().splitlines()[-1])
    import accelc
    import transformers
    model = accelc.load(args.artifact)
    tok, eos = model.artifact.tokenizer, model.artifact.eos_ids
    ids = [tok(t)["input_ids"] for t in TEXTS]
    rows = []
    for prompt, want in zip(PROMPTS, ref["greedy"]):
        res = model.generate(prompt, args.new_tokens, raw=True, result=True)
        theirs = want["tokens"]
        cut = next((i for i, t in enumerate(theirs) if t in eos), len(theirs))      # accelc stops before EOS
        rows.append({"prompt": prompt, "prompt_ids_equal": tok(prompt)["input_ids"] == want["prompt_ids"],
                     "accelc": res.tokens, "reference": theirs[:cut], "identical": res.tokens == theirs[:cut],
                     "text": res.text})
        print(json.dumps({k: rows[-1][k] for k in ("prompt", "prompt_ids_equal", "identical")}), flush=True)
    result = {**provenance(), "gguf": str(args.gguf), "artifact": str(args.artifact),
              "accelc_transformers": transformers.__version__, "reference_transformers": ref["transformers"],
              "backend": model.artifact.choice.backend, "new_tokens": args.new_tokens,
              "tokenizer_ids_equal": [a == b for a, b in zip(ids, ref["ids"])], "reference_ids": ref["ids"],
              "greedy": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
