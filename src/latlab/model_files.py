"""Find, check and load a model directory, turning every failure into a ModelLoadError.

transformers reports a truncated safetensors file or a half-written tokenizer.json with
errors deep in its stack that do not say which file is bad; users of latlab get one line that
names the file and what to do. torch and transformers are imported inside the functions so
``import latlab.model_files`` stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

from latlab import dtypes
from latlab.errors import ModelLoadError

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Parsed when present; a model dir may legitimately ship other tokenizer formats.
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# A safetensors header larger than this is corruption, not a real model.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# Every from_pretrained call passes this: a model is data, and latlab never runs Python code
# shipped inside a model directory (left unset, transformers asks an interactive [y/N]).
TRUST_REMOTE_CODE = False


def _looks_local(text: str) -> bool:
    """Whether the user meant a filesystem path rather than a Hub id like 'org/name'."""
    if text.startswith((".", "/", "~", os.sep)):
        return True
    parts = Path(text).parts
    if len(parts) > 2:  # Hub ids have at most one '/'
        return True
    return len(parts) > 1 and Path(parts[0]).exists()


def resolve_model_path(name_or_path: str | os.PathLike[str] | None) -> str:
    """The bundled model for None, an absolute path for a local dir, else the Hub id as given.

    A local-looking path that does not exist raises ModelLoadError naming it, so a typo is
    not sent to the Hub as a repository name.
    """
    if name_or_path is None:
        from latlab.assets import bundled_model_path

        return str(bundled_model_path())
    text = os.fspath(name_or_path)
    expanded = Path(text).expanduser()
    if expanded.is_dir():
        return str(expanded.resolve())
    if expanded.exists():
        raise ModelLoadError(f"model path '{text}' is a file; pass the model directory")
    if isinstance(name_or_path, os.PathLike) or _looks_local(text):
        raise ModelLoadError(f"model path '{text}' does not exist")
    return text


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path} is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelLoadError(
            f"{path} is not valid JSON ({exc}); re-download or rebuild it"
        ) from exc


def read_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """config.json of a local model directory, as a dict; ModelLoadError naming the file."""
    path = Path(model_dir) / CONFIG_FILE
    config = _read_json(path)
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object; re-download or rebuild it")
    return config


def custom_code_note(name_or_path: str) -> str:
    """Why a model needing its own code is refused, when its config says it does; else ''."""
    path = Path(name_or_path)
    files = (path / CONFIG_FILE, path / "tokenizer_config.json")
    maps = [_read_json(f).get("auto_map") for f in files if f.is_file()]
    named = sorted({str(v) for m in maps if isinstance(m, dict) for v in m.values()})
    if not named:
        return ""
    return (
        f"; it ships its own Python code ({', '.join(named)}), and latlab never runs code "
        "from a model directory (trust_remote_code=False)"
    )


def load_failure(what: str, resolved: str, exc: BaseException) -> ModelLoadError:
    """One line: transformers' messages span several lines and bury the reason."""
    detail = " ".join(str(exc).split())
    note = ""
    if Path(resolved).is_dir():
        note = custom_code_note(resolved)
    if note and "trust_remote_code" in detail:
        detail = "it needs custom code"
    return ModelLoadError(f"could not load {what} '{resolved}': {detail}{note}")


def load_model_config(name_or_path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """config.json of a local model dir as a dict (Hub ids: fetched through transformers)."""
    resolved = resolve_model_path(name_or_path)
    local = Path(resolved)
    if local.is_dir():
        return read_config(local)
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(resolved, trust_remote_code=TRUST_REMOTE_CODE).to_dict()
    except Exception as exc:
        raise load_failure("the config of", resolved, exc) from exc


def check_safetensors(path: Path) -> None:
    """Header parses and every tensor's bytes lie inside the file (catches truncation)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise ModelLoadError(f"{path} is truncated (no safetensors header)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(size - 8, MAX_SAFETENSORS_HEADER):
                raise ModelLoadError(f"{path} is corrupt (bad safetensors header length)")
            header = json.loads(fh.read(header_len))
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is corrupt (safetensors header is not JSON)") from exc
    data_len = size - 8 - header_len
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    if ends and max(ends) > data_len:
        raise ModelLoadError(
            f"{path} is truncated ({data_len} data bytes, tensors need {max(ends)}); "
            "re-download or rebuild it"
        )


def _weight_files(model_dir: Path) -> list[Path]:
    if (model_dir / SAFETENSORS_FILE).exists():
        return [model_dir / SAFETENSORS_FILE]
    index_path = model_dir / SAFETENSORS_INDEX
    if index_path.exists():
        index = _read_json(index_path)
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            raise ModelLoadError(f"{index_path} lists no weight files")
        return [model_dir / shard for shard in shards]
    for name in TORCH_WEIGHTS:
        if (model_dir / name).exists():
            return [model_dir / name]
    raise ModelLoadError(f"no weights in {model_dir} (expected {SAFETENSORS_FILE})")


def check_model_dir(path: str | os.PathLike[str]) -> None:
    """Raise ModelLoadError naming the first bad file: config, weights, tokenizer JSON."""
    model_dir = Path(path)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model path '{model_dir}' does not exist")
    read_config(model_dir)
    for weights in _weight_files(model_dir):
        if not weights.exists():
            raise ModelLoadError(f"{weights} is missing (listed in {SAFETENSORS_INDEX})")
        if weights.suffix == ".safetensors":
            check_safetensors(weights)
    _check_tokenizer_files(model_dir)


def _check_tokenizer_files(model_dir: Path) -> None:
    for name in TOKENIZER_JSON_FILES:
        if (model_dir / name).exists():
            _read_json(model_dir / name)


def load_tokenizer(name_or_path: str | os.PathLike[str] | None = None) -> Any:
    """AutoTokenizer for a model dir or Hub id; ModelLoadError naming the file or reason."""
    resolved = resolve_model_path(name_or_path)
    if Path(resolved).is_dir():
        _check_tokenizer_files(Path(resolved))
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolved, trust_remote_code=TRUST_REMOTE_CODE)
    except Exception as exc:
        raise load_failure("the tokenizer of", resolved, exc) from exc


def torch_dtype(dtype: str) -> Any:
    """'auto' stays 'auto' (transformers then loads the checkpoint's dtype); else torch's."""
    if dtypes.check_dtype(dtype) == dtypes.AUTO:
        return dtypes.AUTO
    return dtypes.torch_dtype(dtype)


def _dtype_kwarg() -> str:
    """transformers renamed from_pretrained's ``torch_dtype`` to ``dtype`` in 4.56."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def quiet_third_party() -> None:
    """Silence loading noise that does not concern a latlab user, in every command.

    transformers draws a "Loading weights" progress bar for each model it loads (one line of
    bar per load in a log file); torchao, which transformers and the int8 recipes import, logs
    a warning for each CUDA-only kernel library it cannot load on a CPU machine, and its enum
    registrations make torch log deprecation lines. Errors still show.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


def load_causal_lm(
    name_or_path: str | os.PathLike[str] | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    attn_implementation: str | None = None,
) -> Any:
    """An eval-mode AutoModelForCausalLM on ``device``; ModelLoadError naming the bad file."""
    resolved = resolve_model_path(name_or_path)
    if Path(resolved).is_dir():
        check_model_dir(resolved)
    kwargs: dict[str, Any] = {
        _dtype_kwarg(): torch_dtype(dtype),
        "trust_remote_code": TRUST_REMOTE_CODE,
    }
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    quiet_third_party()
    try:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(resolved, **kwargs)
        model.to(device)
    except Exception as exc:
        raise load_failure("the model", resolved, exc) from exc
    return model.eval()
