"""Build the models the anchors are measured on, with the project venv (not the anchor venvs).

Why here: every engine (vLLM CPU, transformers, latlab) must load the very same files, so the
reference model is written once with ``save_pretrained`` and reused. It prefers the project's
own builder (``latlab.testing.random_model.save_random_llama``); where that module is missing
it builds the same shape with transformers directly and, lacking the bundled tokenizer, trains a
small byte-level BPE tokenizer so the directory still loads everywhere.

    .venv/bin/python benchmarks/anchors/build_models.py /tmp/ref106m
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "src" / "latlab" / "assets" / "tiny-llama"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
REFERENCE_SHAPE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 6,
    "intermediate_size": 3072,
    "max_position_embeddings": 2048,
}


def build_reference(out_dir: Path, dtype: str = "bfloat16") -> Path:
    """Write the ~106M reference model to ``out_dir`` (skips if config and weights exist)."""
    if (out_dir / "config.json").exists() and (out_dir / "model.safetensors").exists():
        return out_dir
    sys.path.insert(0, str(REPO / "src"))
    try:
        from latlab.testing.random_model import REFERENCE_106M, save_random_llama
    except ImportError:
        return _build_fallback(out_dir, dtype)
    return Path(save_random_llama(out_dir, REFERENCE_106M, dtype=dtype))


def _build_fallback(out_dir: Path, dtype: str) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _write_tokenizer(out_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        torch_dtype=dtype,
        **REFERENCE_SHAPE,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out_dir)
    return out_dir


def _write_tokenizer(out_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    if all((BUNDLED / name).exists() for name in TOKENIZER_FILES[:2]):
        for name in TOKENIZER_FILES:
            if (BUNDLED / name).exists():
                shutil.copy(BUNDLED / name, out_dir / name)
    else:
        _train_bpe(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def _train_bpe(out_dir: Path) -> None:
    """A 4096-token byte-level BPE trained on the standard library's text (stand-in only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    stdlib = Path(shutil.__file__).parent
    texts = [p.read_text(errors="ignore") for p in sorted(stdlib.glob("*.py"))]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    print(build_reference(args.out_dir, args.dtype))


if __name__ == "__main__":
    main()
