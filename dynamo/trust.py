"""Whether a checkpoint (or a model directory) can be trusted, decided before anything is loaded from it.

Checkpoints travel (shared, downloaded, copied from a cluster's scratch space), so two things can be wrong
with one, and each has its defence:

- **Damage** (a truncated copy, a bad sector, a partial sync). Every checkpoint carries `manifest.json`, the
  size and SHA-256 of each of its files, written after all of them; `verify` recomputes them. A checkpoint
  written before manifests existed gets structural checks instead: every JSON file parses and every
  safetensors file is exactly as long as its header says (the trainer state is then checked by loading it).
- **Code.** Nothing read from a checkpoint may run code. The trainer state loads with
  `torch.load(weights_only=True)`, PyTorch's restricted unpickler, which builds tensors and plain containers
  only. AdamW's state (torch.distributed.checkpoint format) is read through `SafeReader`, whose unpickler for
  the `.metadata` file knows only that format's own metadata classes, and `SafePlanner`, which loads its
  non-tensor entries with `weights_only=True` too (PyTorch's own reader uses plain pickle for both). Weights
  come from safetensors only. A file that asks for anything else is refused, and nothing in it has run.

Every problem is a `CheckpointError` whose one-line message names the file, what is wrong and what to do.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

MANIFEST = "manifest.json"
MODEL_ONLY_SKIPS = ("optimizer/", "trainer_state.pt")  # what evaluating a checkpoint's policy does not read
_BLOCK = 16 << 20  # bytes hashed per read


class CheckpointError(ValueError):
    """A checkpoint or model file that cannot be trusted or read; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------------------------
# damage: checksums and structure


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)  # releases the GIL on large blocks: files hash in parallel threads
    return h.hexdigest()


def _files(directory: str) -> list[str]:
    """Every regular file under `directory`, as sorted '/'-separated relative paths (the manifest excluded)."""
    out = []
    for root, _, names in os.walk(directory):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def write_manifest(directory: str) -> None:
    """manifest.json: {file: {bytes, sha256}} of every file in `directory`, written last (tmp + rename)."""
    files = _files(directory)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda rel: sha256_file(os.path.join(directory, rel)), files))
    manifest = {"format": 1, "algorithm": "sha256",
                "files": {rel: {"bytes": os.path.getsize(os.path.join(directory, rel)), "sha256": d}
                          for rel, d in zip(files, digests)}}
    tmp = os.path.join(directory, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(directory, MANIFEST))


def verify(directory: str, *, model_only: bool = False) -> str:
    """Check a checkpoint against its manifest (or, without one, its structure); returns what was checked.
    Raises CheckpointError naming the first bad file. `model_only`: the policy's files alone (eval.py)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        check_model_files(directory)
        return "no manifest (written before checkpoints carried checksums): structure checked, contents not"
    try:
        with open(path) as f:
            listed = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: the manifest is unreadable ({e}); {_FIX}") from None
    listed = {rel: info for rel, info in listed.items()
              if not (model_only and rel.startswith(MODEL_ONLY_SKIPS))}
    for rel, info in listed.items():
        file = os.path.join(directory, rel)
        if not os.path.isfile(file):
            raise CheckpointError(f"{file}: missing (the manifest lists it); {_FIX}")
        size = os.path.getsize(file)
        if size != info["bytes"]:
            raise CheckpointError(f"{file}: {size} bytes where the manifest says {info['bytes']} (truncated or "
                                  f"damaged); {_FIX}")
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        digests = dict(zip(listed, pool.map(lambda rel: sha256_file(os.path.join(directory, rel)), listed)))
    for rel, info in listed.items():
        if digests[rel] != info["sha256"]:
            raise CheckpointError(f"{os.path.join(directory, rel)}: its contents differ from the manifest's SHA-256 "
                                  f"(damaged); {_FIX}")
    return f"intact: {len(listed)} files match their SHA-256"


_FIX = ("this checkpoint cannot be trusted: resume=auto falls back to the newest intact one, or copy it "
        "again from its source")


def check_model_files(directory: str) -> None:
    """Structural checks of a model directory or a checkpoint without manifest: every .json file parses and every
    .safetensors file is exactly as long as its header says. Catches truncation, not every flipped byte."""
    for rel in _files(directory):
        file = os.path.join(directory, rel)
        if rel.endswith(".json"):
            try:
                with open(file, encoding="utf-8") as f:
                    json.load(f)
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{file}: not valid JSON ({e}): the file is damaged; copy it again from its "
                                      "source") from None
        elif rel.endswith(".safetensors"):
            _check_safetensors(file)


def _check_safetensors(file: str) -> None:
    """A safetensors file is an 8-byte header length, a JSON header with each tensor's byte range, the data."""
    size = os.path.getsize(file)
    problem = None
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > size - 8:
            problem = "its header is cut off or damaged"
        else:
            try:
                header = json.loads(f.read(n))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
                if 8 + n + end != size:
                    problem = f"{size} bytes where its header says {8 + n + end} (truncated or damaged)"
            except (ValueError, KeyError, TypeError, AttributeError):
                problem = "its header is damaged"
    if problem:
        raise CheckpointError(f"{file}: {problem}; copy the model again from its source (for a checkpoint: "
                              "resume=auto falls back to the newest intact one)")


# ----------------------------------------------------------------------------------------------------------
# code: loading data only

# Checkpoints written before this module kept numpy's RNG state as an array: these three rebuild an ndarray
# from its bytes and run nothing else, so weights_only may accept them.
_OLD_NUMPY = [np.ndarray, np.dtype, np._core.multiarray._reconstruct, type(np.dtype(np.uint32))]


def safe_torch_load(file: str):
    """torch.load with weights_only=True (tensors and plain containers only); any problem -> CheckpointError."""
    try:
        with torch.serialization.safe_globals(_OLD_NUMPY):
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if str(e) else "not data"
        raise CheckpointError(f"{file}: refused: it holds something other than tensors and plain data ({what}); "
                              "nothing in it was run. Do not use this checkpoint unless you know who made it and "
                              "why") from None
    except Exception as e:  # truncated or flipped bytes surface as many kinds of error
        raise CheckpointError(f"{file}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); {_FIX}") from None


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles torch.distributed.checkpoint's `.metadata` file, allowing only that format's own classes."""
    MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
    NAMES = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
             ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if module in self.MODULES and not name.startswith("__"):
            obj = super().find_class(module, name)
            if isinstance(obj, type):  # the format's dataclasses and enums, never a function
                return obj
        if (module, name) in self.NAMES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def check_optimizer_metadata(directory: str) -> None:
    """Unpickle the optimizer's `.metadata` (if any) with the restricted unpickler: refused if it asks for more."""
    path = os.path.join(directory, ".metadata")
    if os.path.exists(path):
        with open(path, "rb") as f:
            try:
                _MetadataUnpickler(f).load()
            except Exception as e:
                raise CheckpointError(f"{path}: refused or unreadable ({str(e)[:200]}); nothing in it was run; "
                                      f"{_FIX}") from None


def _safe_reader_classes():
    """(SafeReader, SafePlanner), built on first use: torch.distributed.checkpoint imports slowly."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as f:
                try:
                    metadata = _MetadataUnpickler(f).load()
                except Exception as e:
                    raise CheckpointError(f"{path}: refused or unreadable ({str(e)[:200]}); nothing in it was run; "
                                          f"{_FIX}") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            try:
                obj = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as e:
                raise CheckpointError(f"entry {read_item.dest_index.fqn!r} refused ({str(e).splitlines()[-1][:160]}); "
                                      "nothing in it was run. Do not use this checkpoint unless you know who made it "
                                      "and why") from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafeReader, SafePlanner


def safe_dcp_load(state: dict, directory: str) -> None:
    """torch.distributed.checkpoint.load into `state`, reading data only (see the module docstring)."""
    import torch.distributed.checkpoint as dcp
    reader, planner = _safe_reader_classes()
    try:
        dcp.load(state, storage_reader=reader(directory), planner=planner())
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # torch.distributed.checkpoint's CheckpointException derives from BaseException
        inner = _checkpoint_error_in(e)  # torch.distributed.checkpoint wraps what a rank raised
        if inner:
            raise CheckpointError(f"{directory}: {inner}") from None
        raise CheckpointError(f"{directory}: AdamW's state is unreadable ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); {_FIX}") from None


def _checkpoint_error_in(e: BaseException) -> CheckpointError | None:
    if isinstance(e, CheckpointError):
        return e
    for failure in getattr(e, "failures", {}).values():  # CheckpointException: {rank: (exception, traceback)}
        inner = failure[0] if isinstance(failure, tuple) and failure else None
        if isinstance(inner, CheckpointError):
            return inner
    return None
