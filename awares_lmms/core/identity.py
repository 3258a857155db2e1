"""The identity of saved work: one function of everything that can change an answer.

A resumed evaluation (``journal=FILE``) and a reused ``tools.table1`` row must never replay answers that
a fresh run would not give. Both compare ``run_identity(...)``, which covers the weights (and adapter)
actually on disk, the dtype and attention, the backend and, for a server, its URL and served model, the
resolved protocol, the run's mode and decoding options, and the versions of this package and of the
libraries that compute the answer.

The weights' identity is the size and modification time (ns) of every file of the checkpoint folder
(weights, config, tokenizer, processor, chat template), hashed into one digest: new weights written to
the same path change it, while computing it costs one ``stat`` per file, whatever the checkpoint's size
(a content hash of a 7B checkpoint reads 15 GB). A hub id is identified by the snapshot the local hub
cache resolves it to (the commit), read the same way; an id that is not cached is identified by name
only, and says so.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

from awares_lmms.core import errors

# Libraries whose version can change an answer (and this package).
VERSIONED = ("awares-lmms", "lmms_eval", "transformers", "torch", "qwen-vl-utils", "pillow")


def _folder_digest(folder: Path) -> dict:
    digest = hashlib.sha256()
    count = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()  # follows the hub cache's symlinks to the blobs
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        count += 1
    return {"files": count, "digest": digest.hexdigest()[:32]}


def weights_identity(source) -> dict | None:
    """What identifies the checkpoint ``source`` (a local folder or a hub id) as it is now."""
    if source is None:
        return None
    local = Path(str(source)).expanduser()
    if local.is_dir():
        return {"path": str(local.resolve()), **_folder_digest(local)}
    if local.is_file():
        stat = local.stat()
        return {"path": str(local.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(source), "config.json")
    except Exception:  # noqa: BLE001 - not a repo id: identified by name
        cached = None
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        return {"hub_id": str(source), "revision": snapshot.name, **_folder_digest(snapshot)}
    return {"hub_id": str(source), "revision": "unknown (not in the local hub cache)"}


def versions() -> dict:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def run_identity(*, pretrained, adapter=None, **answer_settings) -> dict:
    """Everything that can change an answer: the weights of ``pretrained`` and ``adapter`` as they are on
    disk, ``answer_settings`` (dtype, backend, server URL and served model, protocol, mode, ...; any
    JSON-able values) and the versions of ``VERSIONED``."""
    identity = {"pretrained": str(pretrained), "weights": weights_identity(pretrained),
                "adapter": None if adapter is None else str(adapter), "adapter_weights": weights_identity(adapter),
                "versions": versions()}
    identity.update(answer_settings)
    return identity


def cost_of(source, repeat: int = 5) -> float:
    """Seconds one ``weights_identity(source)`` takes (the best of ``repeat``): what a resume pays."""
    import time

    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        weights_identity(source)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    """``python -m awares_lmms.core.identity CHECKPOINT...``: each checkpoint's weights identity and what
    computing it costs."""
    import json
    import sys

    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        raise errors.InputError("usage: python -m awares_lmms.core.identity CHECKPOINT [CHECKPOINT ...]")
    for path in paths:
        print(json.dumps(weights_identity(path)), f"{cost_of(path) * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    errors.exit_with("awares_lmms.core.identity", main)
