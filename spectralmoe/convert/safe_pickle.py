"""Read foreign PyTorch checkpoints without running code from them.

A checkpoint written by mmengine (the authors' and Rein's training code) is a pickle holding, besides
the model's ``state_dict``, objects of classes that are not installed here — ``meta`` (config text,
dataset classes), ``message_hub`` (``mmengine.logging.HistoryBuffer`` objects wrapping numpy arrays),
``optimizer`` and ``param_schedulers`` state. ``torch.load(weights_only=True)`` rejects those classes;
``weights_only=False`` would import and run whatever the file names. A checkpoint is untrusted input, so
this module unpickles it with an allow-list of its own:

* the functions PyTorch itself uses to rebuild tensors, parameters and storages, ``OrderedDict`` and a
  few inert builtins are allowed;
* globals of the metadata namespaces (``mmengine``, ``mmcv``, ``mmseg``, ``mmdet``, ``numpy``) become
  :class:`Opaque` stand-ins: they record what the pickle passes to them and never execute anything, so
  the metadata loads and is thrown away (only ``state_dict`` and plain ``meta`` values are kept);
* any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, a class of some other
  package…) stops the load with :class:`UnsafeCheckpointError` naming it, before it can be called.

The pickle runs through ``torch.load(..., pickle_module=<this module>, weights_only=False)``: torch's
own loader reads the zip (or legacy) container and the tensor storages, and asks our ``Unpickler`` for
every global. Plain ``state_dict`` files (a flat mapping of names to tensors) load the same way.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = [
    "CheckpointContents",
    "Opaque",
    "UnpicklingError",
    "UnsafeCheckpointError",
    "Unpickler",
    "load",
    "loads",
    "read_checkpoint",
]

UnpicklingError = pickle.UnpicklingError


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """The checkpoint names a global this reader does not allow (it might run code)."""


#: Namespaces whose objects may appear in a checkpoint's metadata; they are replaced by inert stand-ins.
METADATA_NAMESPACES = ("mmengine", "mmcv", "mmseg", "mmdet", "numpy")

#: Globals that rebuild tensors; (module, name) pairs that torch writes into its own pickles.
_TORCH_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch._tensor", "Tensor"): torch.Tensor,
    ("torch", "Tensor"): torch.Tensor,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}
_TORCH_DTYPES = {
    name: getattr(torch, name)
    for name in dir(torch)
    if isinstance(getattr(torch, name, None), torch.dtype)
}
#: Builtins that only build plain values.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "tuple"): tuple,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "str"): str,
    ("builtins", "bool"): bool,
    ("builtins", "bytes"): bytes,
    ("_codecs", "encode"): __import__("_codecs").encode,  # protocol-2 pickles store bytes this way
}


class Opaque(dict):
    """Inert stand-in for a metadata object of a class that is not installed (or must not run).

    Pickle may call it (as a class or a function), set its state, append to it or set items on it; it
    only records what it is given. It is a ``dict`` so that dict-like metadata (mmengine's
    ``ConfigDict``) keeps its items.
    """

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: D107 - records only
        super().__init__()
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None
        self.items_list: list[Any] = []

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.items_list.append(item)

    def extend(self, items: Any) -> None:
        self.items_list.extend(items)

    def __reduce__(self) -> Any:  # never re-pickled into something that runs
        raise TypeError(f"{self.qualified_name} stand-in cannot be pickled")

    def __repr__(self) -> str:
        return f"<opaque {self.qualified_name}>"


def _opaque_class(module: str, name: str) -> type[Opaque]:
    return type(name, (Opaque,), {"qualified_name": f"{module}.{name}", "__module__": __name__})


class Unpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only allow-listed globals (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - documented in the class
        allowed = _TORCH_GLOBALS.get((module, name)) or _SAFE_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        if module.split(".", 1)[0] in METADATA_NAMESPACES:
            return _opaque_class(module, name)
        raise UnsafeCheckpointError(
            f"refusing global {module}.{name}: only tensors, plain containers and "
            f"{'/'.join(METADATA_NAMESPACES)} metadata are read from a checkpoint"
        )


def load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` with :class:`Unpickler` (torch reads a legacy file's header with it)."""
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:
    """``pickle.loads`` with :class:`Unpickler`."""
    return Unpickler(io.BytesIO(data), **kwargs).load()


# ------------------------------------------------------------------------------------------- reading
@dataclass
class CheckpointContents:
    """What a foreign checkpoint holds that the importer uses."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    #: plain values of the checkpoint's ``meta`` (stand-ins dropped), e.g. ``cfg`` text, ``dataset_meta``
    meta: dict[str, Any] = field(default_factory=dict)
    #: top-level keys of the file besides ``state_dict``/``meta`` (``message_hub``, ``optimizer``…), dropped
    dropped: list[str] = field(default_factory=list)


def _plain(value: Any) -> Any:
    """``value`` with every stand-in removed (None in its place); tensors dropped too."""
    if isinstance(value, Opaque) or isinstance(value, torch.Tensor):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return None


def read_checkpoint(path: str | os.PathLike[str]) -> CheckpointContents:
    """Read an mmengine checkpoint (``{'meta', 'state_dict', 'message_hub', 'optimizer', …}``) or a plain
    state-dict file with the restricted unpickler; return its tensors and plain metadata.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle names a global outside the allow-list (nothing was run).
        ValueError: the file is not a checkpoint, or its state dict holds something other than tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        raw = torch.load(path, map_location="cpu", pickle_module=_module(), weights_only=False)
    except UnsafeCheckpointError as error:
        raise UnsafeCheckpointError(f"{path}: {error}") from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as error:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: a checkpoint must be a mapping, the file holds a {type(raw).__name__}")
    if "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        state, meta = raw["state_dict"], raw.get("meta")
        dropped = sorted(str(k) for k in raw if k not in ("state_dict", "meta"))
    else:
        state, meta, dropped = raw, None, []
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: state dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key] = value.detach()
    if not tensors:
        raise ValueError(f"{path}: the checkpoint holds no tensors")
    plain_meta = _plain(meta) if isinstance(meta, Mapping) else {}
    return CheckpointContents(path=path, state_dict=tensors, meta=plain_meta or {}, dropped=dropped)


def _module() -> Any:
    """This module, passed to ``torch.load`` as its ``pickle_module``."""
    import sys

    return sys.modules[__name__]
