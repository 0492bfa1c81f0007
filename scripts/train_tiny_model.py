"""Build latlab's bundled tiny model from text this machine already has.

Corpus: the docstrings of CPython's own standard library (read with ``ast``, never imported)
plus the long documentation strings of ``pydoc_data/topics.py`` (the language reference as
``help()`` shows it). No network, no downloads: the stdlib of the interpreter that runs this
script is the data set, so anyone can rebuild the assets.

Stages (``--stage``):
- ``tokenizer``: byte-level BPE (HF ``tokenizers``) with bos/eos/pad and chat role markers,
  saved with a chat template; committed first so random-weight models can reuse it.
- ``model``: a Llama-architecture causal LM with grouped-query attention, trained on CPU with
  AdamW and a cosine schedule until ``--max-steps`` or the wall-clock ``--budget-min`` runs
  out (it still saves then). Writes safetensors, generation_config.json, heldout.txt and
  training_report.json (held-out perplexity included).
- ``all``: both.

Files are split into train / held-out by a seeded hash of their path relative to the stdlib,
so the split does not depend on file order or on which other files exist.

Rebuild the shipped assets (about 10 minutes on an idle 2-core machine; see docs/tiny-model.md):
    .venv/bin/python scripts/train_tiny_model.py --stage all \
        --batch-size 16 --max-steps 1200 --lr 3e-3 --warmup-fraction 0.05 --bf16 --budget-min 40
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

from latlab.assets.corpus import Document, build_corpus
from latlab.compress.training import encode_documents, lr_at, sample_batch, window_perplexity

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "latlab" / "assets" / "tiny-llama"

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)

# Each turn is "<|role|>\n" + content + eos; the assistant's eos is what ends generation.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unsupported chat role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# -------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE over the training texts; bos is prepended when encoding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def save_tokenizer(tokenizer, out: Path, model_max_length: int) -> None:
    """tokenizer.json + tokenizer_config.json (chat template) + special_tokens_map.json."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    special_map = {
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": list(ROLE_TOKENS),
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    # transformers 4.x and 5.x write different keys; write the ones both read.
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    config_path = out / "tokenizer_config.json"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    stray = out / "chat_template.jinja"
    if stray.exists():
        stray.unlink()


def run_tokenizer_stage(args: argparse.Namespace) -> None:
    train, heldout = build_corpus(args.seed, args.heldout_fraction)
    start = time.perf_counter()
    tokenizer = train_tokenizer([d.text for d in train], args.vocab_size)
    save_tokenizer(tokenizer, args.out, args.max_position_embeddings)
    print(
        f"tokenizer: vocab {tokenizer.get_vocab_size()} from {len(train)} train documents "
        f"({sum(len(d.text) for d in train)} chars; {len(heldout)} held out) "
        f"in {time.perf_counter() - start:.1f}s -> {args.out}"
    )


# ------------------------------------------------------------------------------ model


def chat_documents(docs: list[Document], seed: int, fraction: float) -> list[str]:
    """A few docstrings recast as chat turns so chat requests get text, not noise.

    The question names the file the docstring came from; the answer is its first paragraph.
    """
    rng = random.Random(seed)
    out = []
    for doc in docs:
        if rng.random() >= fraction:
            continue
        module = doc.source.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        answer = doc.text.split("\n\n")[0].strip()
        question = rng.choice(
            (
                f"What does {module} provide?",
                f"Explain this part of {module}.",
                f"Describe the {module} module.",
            )
        )
        out.append(f"{ROLE_TOKENS[1]}\n{question}{EOS}{ROLE_TOKENS[2]}\n{answer}{EOS}")
    return out


def model_config(tokenizer, args: argparse.Namespace):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        max_position_embeddings=args.max_position_embeddings,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def train_loop(model, stream, args: argparse.Namespace) -> dict:
    """AdamW + warm-up/cosine until max_steps or the wall-clock budget, whichever is first.

    The schedule's progress is max(step fraction, time fraction) so the learning rate has
    decayed when the budget stops training early (a shared machine may be slow).
    """
    import torch

    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1
    )
    budget_s = args.budget_min * 60.0
    start = time.perf_counter()
    step, tokens_seen, loss_ema = 0, 0, None
    model.train()
    while step < args.max_steps:
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            break
        progress = max(step / args.max_steps, elapsed / budget_s)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(progress, args.warmup_fraction, args.lr, args.lr * 0.1)
        inputs, targets = sample_batch(stream, args.batch_size, args.seq_len, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        tokens_seen += inputs.numel()
        value = loss.item()
        loss_ema = value if loss_ema is None else 0.98 * loss_ema + 0.02 * value
        if step % args.log_every == 0:
            print(
                f"step {step} loss {value:.3f} ema {loss_ema:.3f} "
                f"lr {optimizer.param_groups[0]['lr']:.2e} tokens {tokens_seen} "
                f"elapsed {time.perf_counter() - start:.0f}s",
                flush=True,
            )
    model.eval()
    return {
        "steps": step,
        "tokens_seen": tokens_seen,
        "train_wall_s": round(time.perf_counter() - start, 1),
        "train_loss_ema": round(loss_ema or float("nan"), 4),
        "stopped_by": "budget" if step < args.max_steps else "max_steps",
    }


def write_heldout_text(heldout: list[Document], out: Path, max_chars: int) -> str:
    """The first held-out documents (sorted by source) up to max_chars, blank-line separated."""
    parts, size = [], 0
    for doc in heldout:
        if size + len(doc.text) > max_chars:
            break
        parts.append(doc.text)
        size += len(doc.text) + 2
    text = "\n\n".join(parts) + "\n"
    (out / "heldout.txt").write_text(text, encoding="utf-8")
    return text


def sample_continuations(model, tokenizer, prompts: list[str], max_new_tokens: int) -> dict:
    import torch

    samples = {}
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=None
            )
        samples[prompt] = tokenizer.decode(out[0, enc["input_ids"].shape[1] :])
    return samples


SAMPLE_PROMPTS = (
    "Return the number of",
    "This module provides",
    "Raise ValueError if",
    "The default value is",
)


def run_model_stage(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    out: Path = args.out
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    train, heldout = build_corpus(args.seed, args.heldout_fraction)
    chats = chat_documents(train, args.seed, args.chat_fraction)
    texts = [d.text for d in train]
    random.Random(args.seed).shuffle(texts)
    stream = encode_documents(tokenizer, texts + chats)
    heldout_stream = encode_documents(tokenizer, [d.text for d in heldout])
    print(f"corpus: {len(stream)} train tokens, {len(heldout_stream)} held-out tokens", flush=True)

    config = model_config(tokenizer, args)
    model = LlamaForCausalLM(config)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"model: {num_params} parameters, {args.threads} threads", flush=True)
    stats = train_loop(model, stream, args)

    heldout_ppl = window_perplexity(model, heldout_stream, args.seq_len, args.eval_tokens)
    heldout_text = write_heldout_text(heldout, out, args.heldout_txt_chars)
    txt_ids = tokenizer(heldout_text, return_tensors="pt")["input_ids"][0]
    heldout_txt_ppl = window_perplexity(model, txt_ids, args.seq_len, args.eval_tokens)

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=128,
        do_sample=False,
    )
    model.save_pretrained(str(out), safe_serialization=True)
    samples = sample_continuations(model, tokenizer, list(SAMPLE_PROMPTS), 40)
    report = {
        "corpus": {
            "source": "CPython stdlib docstrings + pydoc_data/topics.py (read with ast)",
            "python": platform.python_version(),
            "train_documents": len(train),
            "chat_documents": len(chats),
            "heldout_documents": len(heldout),
            "train_chars": sum(len(d.text) for d in train),
            "heldout_chars": sum(len(d.text) for d in heldout),
            "train_tokens": len(stream),
            "heldout_tokens": len(heldout_stream),
        },
        "tokenizer": {"type": "byte-level BPE", "vocab_size": len(tokenizer)},
        "model": {
            "architecture": "LlamaForCausalLM",
            "parameters": num_params,
            "hidden_size": args.hidden_size,
            "num_hidden_layers": args.num_layers,
            "num_attention_heads": args.num_heads,
            "num_key_value_heads": args.num_kv_heads,
            "intermediate_size": args.intermediate_size,
        },
        "training": {
            **stats,
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "peak_lr": args.lr,
            "seed": args.seed,
            "threads": args.threads,
            "bf16_autocast": args.bf16,
            "budget_min": args.budget_min,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        },
        "heldout_perplexity": round(heldout_ppl, 3),
        "heldout_txt_perplexity": round(heldout_txt_ppl, 3),
        "perplexity_method": (
            f"exp(mean next-token NLL), non-overlapping windows of {args.seq_len} tokens, "
            f"first {args.eval_tokens} tokens; heldout.txt encoded with its leading <|bos|>"
        ),
        "samples": samples,
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2), flush=True)


# -------------------------------------------------------------------------------- cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=("tokenizer", "model", "all"), default="all")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout-fraction", type=float, default=0.05)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--intermediate-size", type=int, default=704)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=8)
    p.add_argument("--num-kv-heads", type=int, default=2)
    p.add_argument("--max-position-embeddings", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup-fraction", type=float, default=0.05)
    p.add_argument("--max-steps", type=int, default=1200)
    p.add_argument("--budget-min", type=float, default=25.0, help="wall-clock training budget")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast for the training matmuls (fp32 weights; fast on AVX-512 BF16 CPUs)",
    )
    p.add_argument("--chat-fraction", type=float, default=0.1)
    p.add_argument("--eval-tokens", type=int, default=20_000)
    p.add_argument("--heldout-txt-chars", type=int, default=6000)
    p.add_argument("--log-every", type=int, default=25)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.stage in ("tokenizer", "all"):
        run_tokenizer_stage(args)
    if args.stage in ("model", "all"):
        run_model_stage(args)


if __name__ == "__main__":
    main()
