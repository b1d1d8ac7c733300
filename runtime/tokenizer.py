"""The runtime's tokenizer: the artifact's tokenizer.json run by the `tokenizers` library, its chat template
rendered by jinja2 in a sandbox, without importing transformers (or torch): `accelc run` starts seconds
sooner, and an app that ships the runtime does not need them.

It reproduces what transformers' fast tokenizers do for the calls the runtime makes (tests compare the two
on the packaged model and the tiny models): `tok(text, add_special_tokens=...)["input_ids"]` (the
tokenizer.json post-processor adds BOS/EOS as transformers would), `decode(ids, skip_special_tokens=True)`
(with transformers' clean-up of tokenization spaces when the config asks for it), `apply_chat_template`
(transformers' jinja environment: trim_blocks, lstrip_blocks, loopcontrols, its tojson, raise_exception and
strftime_now, the special tokens as variables) and `eos_token_id`. An artifact without tokenizer.json (a
slow tokenizer) is opened with transformers instead (runtime/artifact.py load_tokenizer).
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from ..compiler.errors import ArtifactError

SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_text(v) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):      # AddedToken serialised
        return v["content"]
    return None


def _clean_up_tokenization(text: str) -> str:
    """transformers' clean_up_tokenization (spaces before punctuation and contractions)."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def _jinja_env():
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """{% generation %}...{% endgeneration %} (transformers' assistant-mask tag) renders its body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class RuntimeTokenizer:
    def __init__(self, tdir: Path):
        from tokenizers import Tokenizer
        self._tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
        cfg_path = tdir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        if not isinstance(cfg, dict):
            raise ArtifactError("tokenizer/tokenizer_config.json must hold a JSON object")
        self.special_tokens_map = {k: t for k in SPECIAL if (t := _token_text(cfg.get(k))) is not None}
        self.clean_up_tokenization_spaces = bool(cfg.get("clean_up_tokenization_spaces", False))
        template = cfg.get("chat_template")
        jinja = tdir / "chat_template.jinja"
        if jinja.is_file():
            template = jinja.read_text()
        self.chat_template = template if isinstance(template, str) and template else None
        self._compiled = None
        eos = self.special_tokens_map.get("eos_token")
        self.eos_token_id = self._tok.token_to_id(eos) if eos is not None else None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self._tok.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        text = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return _clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False,
                            tokenize: bool = False, **kwargs):
        if self.chat_template is None:
            raise ArtifactError("this artifact's tokenizer has no chat template")
        if self._compiled is None:
            self._compiled = _jinja_env().from_string(self.chat_template)
        text = self._compiled.render(messages=messages, tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt,
                                     **{**self.special_tokens_map, **kwargs})
        return self(text, add_special_tokens=False)["input_ids"] if tokenize else text


def runtime_tokenizer(tdir: Path) -> RuntimeTokenizer | None:
    """The light tokenizer when the artifact has a tokenizer.json (every fast tokenizer), else None."""
    if not (tdir / "tokenizer.json").is_file():
        return None
    return RuntimeTokenizer(tdir)
