"""The backend registry: ``hf`` (transformers ``generate``), ``vllm`` (in process) and ``openai`` (any
OpenAI-compatible server). Every backend runs the same ``TwoTurnProtocol``; only the part that
generates text differs.

A backend is one module that declares a ``BACKEND`` (``Backend``): its name, its options (a dataclass
whose fields are its ``--model_args``, read strictly by its ``read``), its constraints (whether it
takes an adapter, the static cache, several processes under ``accelerate launch``) and how its engine
is built. ``BACKEND_MODULES`` maps each name to its module; a module is imported only when its backend
is used (``backend=hf`` never imports the openai SDK or vLLM). The plugin, the client and the tools
ask the registry and hold no backend rule.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from awares_lmms.core.arguments import ArgumentError

BACKEND_MODULES = {
    "hf": "awares_lmms.core.hf_engine",
    "vllm": "awares_lmms.core.vllm_backend",
    "openai": "awares_lmms.core.openai_backend",
}
BACKENDS = tuple(BACKEND_MODULES)


@dataclass(frozen=True)
class LoadArguments:
    """What every backend may need to load a checkpoint (each reads what applies to it)."""

    adapter: str | None = None
    dtype: object = "float32"  # a torch dtype or its name
    dtype_name: str | None = None  # the dtype as the user named it ("auto" included), for servers' own loaders
    device: str = "cpu"
    attn_implementation: str | None = None
    trust_remote_code: bool = False


@dataclass(frozen=True)
class Backend:
    name: str
    options: type  # a dataclass with a ``read(values: dict)`` classmethod: its fields are --model_args
    build: Callable  # (pretrained, EngineConfig, options, LoadArguments) -> TwoTurnProtocol
    adapter: bool = False  # takes adapter= (else the checkpoint must be merged first)
    static_cache: bool = False  # static_cache= applies
    multi_process: bool = True  # may run as several processes under accelerate launch
    # The server a run talks to, for the run's identity (None: the weights are loaded in process).
    server: Callable | None = None  # (options, pretrained) -> dict

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.options))

    def check_use(self, adapter=None, static_cache: bool = False) -> None:
        """The backend's constraints on what a run asks of it, as one-line errors (the plugin checks them
        when it reads --model_args, ``build_engine`` for every other caller)."""
        if adapter and not self.adapter:
            raise ArgumentError(f"adapter= works with backend=hf only; merge it first (backend={self.name} serves "
                                "a full checkpoint)")
        if static_cache and not self.static_cache:
            raise ArgumentError(f"static_cache does not apply to backend={self.name} (it manages its own cache)")


def get(name: str) -> Backend:
    """The registered backend ``name`` (its module imported now)."""
    if name not in BACKEND_MODULES:
        raise ArgumentError(f"backend must be one of {BACKENDS}, got {name!r}")
    return importlib.import_module(BACKEND_MODULES[name]).BACKEND


def option_owners() -> dict[str, list[str]]:
    """Every backend option name and the backends that declare it."""
    owners: dict[str, list[str]] = {}
    for name in BACKENDS:
        for option in get(name).option_names:
            owners.setdefault(option, []).append(name)
    return owners


def read_options(name: str, values: dict):
    """The options of backend ``name`` from ``--model_args`` values; a value of another backend's option
    is an error naming the backend it belongs to."""
    backend = get(name)
    foreign = sorted(k for k in values if k not in backend.option_names)
    if foreign:
        owners = option_owners()
        where = "; ".join(f"{k} applies to backend={'|'.join(owners[k])}" for k in foreign)
        raise ArgumentError(f"{where}, not backend={name}")
    return backend.options.read(values)


def build_engine(backend: str, pretrained: str, config, opts=None, adapter: str | None = None, dtype="float32",
                 device: str = "cpu", attn_implementation: str | None = None, trust_remote_code: bool = False,
                 dtype_name: str | None = None):
    """The engine of ``backend`` for ``pretrained`` (``opts``: the backend's options, default its own)."""
    entry = get(backend)
    entry.check_use(adapter, config.static_cache)
    opts = opts if opts is not None else entry.options.read({})
    if not isinstance(opts, entry.options):
        raise ArgumentError(f"backend={backend} takes {entry.options.__name__}, got {type(opts).__name__}")
    load = LoadArguments(adapter, dtype, dtype_name, device, attn_implementation, trust_remote_code)
    return entry.build(pretrained, config, opts, load)
