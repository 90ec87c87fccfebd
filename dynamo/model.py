"""Models and tokenizers: any local Hugging Face causal-LM directory, a GGUF file, or the embedded tiny model.

The embedded tiny model is a Qwen2-style decoder (about 1 M parameters) with a 20-token vocabulary
built here with the `tokenizers` library, wrapped in `PreTrainedTokenizerFast` so that `generate`,
`save_pretrained` / `from_pretrained` and a chat template work as with any hub model.
"""
from __future__ import annotations

import os

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

from dynamo import trust

hf_logging.disable_progress_bar()  # per-shard bars on every save/load would drown the step lines

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
TINY_SYMBOLS = [str(d) for d in range(10)] + ["+", "*", "=", ",", "\\boxed{", "}"]
# A minimal chat template so chat-style prompting works with the tiny tokenizer too.
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer for the built-in task; `\\boxed{` is one token."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + TINY_SYMBOLS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\\boxed\{|."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # without a decoder, decode() joins tokens with spaces
    # Without a post-processor no BOS is added (the tokenizers library adds special tokens only through one).
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                      eos_token="<eos>", unk_token="<unk>")
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def tiny_model(tokenizer, seed: int) -> Qwen2ForCausalLM:
    """The embedded model's Qwen2 config: hidden 128, 4 layers, 4 heads, tied embeddings, 128 positions."""
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=512, max_position_embeddings=128,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def load_gguf(path: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a GGUF file, dequantised: a plain model that trains and saves like any other."""
    import importlib.util
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"model {path!r} is a GGUF file: reading it needs {' and '.join(missing)} "
                         f"(pip install {' '.join(missing)}); it is dequantised to float32 on load")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path!r}")
    folder, name = os.path.split(os.path.abspath(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                      local_files_only=True)
    except Exception as e:  # gguf's reader raises many kinds of error on a cut-off or damaged file
        raise trust.CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200] if str(e) else ''}); it may be truncated or "
                                    "damaged: download or convert it again") from None
    # transformers flags a model read from GGUF as quantised and refuses to save it: rebuild it plain.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    model.to(dtype)
    prepare_tokenizer(tokenizer, model)
    return model, tokenizer


def load_pretrained(path: str, dtype: torch.dtype = torch.float32, *, check: bool = True):
    """(model, tokenizer) from a local Hugging Face directory or a .gguf file; never touches the network.

    The directory is checked first (dynamo/trust.py; `check=False` where the caller just did): a checkpoint's
    policy files against its manifest, any other directory's JSON and safetensors files for damage. Weights are
    read from safetensors only (a pickled pytorch_model.bin could run code) and no code from the directory runs."""
    if path.lower().endswith(".gguf"):
        return load_gguf(path, dtype)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path!r} (config key 'model': use 'tiny' "
                                "or a local Hugging Face model directory)")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"model directory {path!r} has no config.json: not a Hugging Face model")
    if check:
        trust.verify(path, model_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, use_safetensors=True,
                                                     trust_remote_code=False)
    except Exception as e:  # a damaged file the checks above could not see
        raise trust.CheckpointError(f"{path}: the model cannot be loaded ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200] if str(e) else ''}); copy it again from its "
                                    "source") from None
    prepare_tokenizer(tokenizer, model)
    return model, tokenizer


def prepare_tokenizer(tokenizer, model) -> None:
    """Left padding for generation and a pad token distinct from EOS (pad == EOS would hide where a response ends)."""
    tokenizer.padding_side = "left"
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: responses could never end")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # Masks never look at token values, only at positions, but a distinct pad keeps outputs readable;
        # reuse an existing special token when the tokenizer has one, else add one.
        candidates = [t for t in ("<|fim_pad|>", "<pad>", "<|endoftext|>") if t in tokenizer.get_vocab()]
        candidates = [t for t in candidates if tokenizer.convert_tokens_to_ids(t) != tokenizer.eos_token_id]
        if candidates:
            tokenizer.pad_token = candidates[0]
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            model.resize_token_embeddings(len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
