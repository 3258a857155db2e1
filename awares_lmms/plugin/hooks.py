"""Small, documented patches of lmms-eval 0.7.3's private API (the one place that touches it).

The first three patch ``TaskManager`` for the AwaRes task suite, its start-up time and local data.

lmms-eval has no entry-point group for tasks, and when an ``--include_path`` task has the same
name as a built-in one the built-in wins (``tasks/__init__.py``: ``{**tasks, **task_index}``).
The AwaRes suite (``tasks_config/``) deliberately reuses the built-in names ``chartqa``,
``docvqa``, ``ocrbench``, ``pope`` and ``realworldqa`` (plus ``vstar``) so that tables read like
the paper's. ``install()`` therefore patches three methods of ``lmms_eval.tasks.TaskManager``:

``initialize_tasks``
    The ``tasks_config`` directory is added to the include paths when the TaskManager is built for
    ``model_name="awares"`` (lmms-eval's own entry points pass ``--model``), so ``python -m lmms_eval``
    and ``accelerate launch -m lmms_eval`` with ``--model awares`` use the AwaRes tasks too; other
    models see no change. After the stock indexing, if the ``tasks_config`` directory is among the include paths, its
    entries are indexed once more and override whatever had the same name. Only that directory
    gets this treatment; every other include path keeps the stock "built-in wins" rule, and a
    run that does not include ``tasks_config`` sees no change at all. Paths registered with
    ``include_path`` (the ``lmms_eval`` console script registers ``tasks_config`` for its run) are
    appended to whatever ``--include_path`` the user gave, which lifts lmms-eval's
    one-path-only limit for this package.

``_get_task_and_group``
    For lmms-eval's own task tree only: its index (about 1900 YAMLs parsed, ~5 s of every start) is
    reused while no YAML there changed size or time, from memory and from
    ``~/.cache/awares_lmms/lmms_eval_task_index.json`` (``cached_task_index``); the same dict lmms-eval
    builds, minus the debug lines its parse logs. Every other directory is indexed as lmms-eval does.
``_get_config``
    The local-data switch, for any task: when the environment variable ``AWARES_DATASETS_DIR`` is set
    and ``$AWARES_DATASETS_DIR/<task>.parquet`` exists, the task reads that file instead of its hub
    dataset (``dataset_path: parquet``, ``data_files: {<test split>: file}``, no ``dataset_name``),
    whatever its YAML says and for every model. The variable is read every time a task config is
    loaded, not at install time. For a task of ``tasks_config`` a missing file raises
    ``FileNotFoundError`` naming the path before any download is attempted; any other task without a
    file keeps its hub dataset (logged).

Three more put the task layer (``task_layer.py``) over every task an ``awares`` run loads:

``ConfigurableTask.download``
    When the task is built for a model that declares ``awares_task_layer`` (``TaskManager(model_name=
    "awares")``, as every lmms-eval entry point builds it for ``--model awares``), the task's output type
    is checked before its data is read, and the task is layered right after (uids stamped, ``rtr`` and
    ``rtr_paper`` declared), so that even the one document lmms-eval's constructor tries is isolated.
``ConfigurableTask.doc_to_text`` / ``doc_to_visual`` / ``doc_to_target`` / ``process_results`` / ``apply_filters``
    On a layered task, each runs through ``task_layer``'s guard (the document's failure recorded, never
    raised); on any other task, the original runs untouched.
``lmms_eval.evaluator.evaluate``
    With a model that declares ``awares_task_layer``: the failure ledger is cleared and every task and
    group in the task dict is layered (tasks built by another ``TaskManager``, the Python API) before any
    request is built.

Two more patch how results are written (``_patch_evaluation_tracker``):

``EvaluationTracker.save_results_aggregated``
    Adds ``config.awares_protocol`` (the resolved protocol settings of the ``awares`` model built in
    this process) and ``config.awares_document_errors`` to the results before they are written.
    lmms-eval assembles ``results["config"]`` after the evaluation from its own arguments only, with
    no hook for the model; this method is the last place the dict passes before it is written. It also
    makes the file name the run's own (process id and a random part after the start second) and reads
    the written file back.
``EvaluationTracker.save_results_samples``
    Reads the written samples file back: one parseable line per document, else an output problem.

``repeated_model_args`` splits ``--model_args`` with ``lmms_eval.utils._smart_comma_split``, so that a key
given twice (which lmms-eval's parser resolves silently, the last one winning) is found exactly as
lmms-eval splits the string.

Installed when an ``awares`` model is built, and by the ``lmms_eval`` command for every model (which
then exits 1 on any output problem: stock lmms-eval only logs a warning).

How it gets installed: ``awares_lmms.plugin.registration.manifests`` (our ``lmms_eval.models`` entry
point, which lmms-eval calls while importing ``lmms_eval.models``, before any ``TaskManager`` is
built) calls ``install()``. Importing ``lmms_eval.tasks`` costs several seconds (torch), and
``lmms_eval.models`` is imported before it, so when ``lmms_eval.tasks`` is not imported yet the
patch is deferred with a one-shot import hook instead of importing it here. ``install()`` is
idempotent. The three patched methods are private lmms-eval API: the package pins lmms-eval==0.7.3.

Known gap: ``lmms-eval tasks ...`` (the stock listing subcommand) never imports
``lmms_eval.models``, so the stock listing shows the built-in YAML path for clashing names;
``lmms_eval tasks ...`` (our console script) and every evaluation run use ours.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import secrets
import sys
from pathlib import Path

from awares_lmms.data.task_files import tasks_dir

DATASETS_ENV = "AWARES_DATASETS_DIR"
_TARGET_MODULE = "lmms_eval.tasks"
_MARK = "_awares_hooks_installed"
# Tasks whose data only exists locally (no hub copy), with the command that writes it.
GENERATED_TASKS = {"awares_synth": "python -m awares_lmms.data.synthetic",
                   "awares_synth2": "python -m awares_lmms.data.synthetic2"}

# Include paths appended to every TaskManager (see include_path).
_EXTRA_INCLUDE: list[str] = []


def _real(path) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def _is_tasks_dir(path) -> bool:
    try:
        return _real(path) == str(tasks_dir())
    except RuntimeError:
        return False


def _inside_tasks_dir(path) -> bool:
    try:
        root = str(tasks_dir())
    except RuntimeError:
        return False
    real = _real(path)
    return real == root or real.startswith(root + os.sep)


@contextlib.contextmanager
def include_path(path):
    """Index ``path`` in every TaskManager built inside the block, in addition to its own include paths
    (the ``lmms_eval`` command's run; a Python caller of its ``main`` gets its TaskManagers back as
    they were)."""
    real = _real(path)
    added = real not in _EXTRA_INCLUDE
    if added:
        _EXTRA_INCLUDE.append(real)
    try:
        yield
    finally:
        if added:
            _EXTRA_INCLUDE.remove(real)


def _as_list(include_path) -> list[str]:
    if include_path is None:
        return []
    if isinstance(include_path, (str, os.PathLike)):
        return [str(include_path)]
    return [str(p) for p in include_path]


# ----------------------------------------------------------------------------- offline datasets


def offline_parquet(task_name: str) -> Path | None:
    """``$AWARES_DATASETS_DIR/<task_name>.parquet`` when the variable is set, else ``None``."""
    root = os.environ.get(DATASETS_ENV, "").strip()
    if not root:
        return None
    return Path(root).expanduser().resolve() / f"{task_name}.parquet"


def apply_offline_dataset(config: dict, required: bool = True) -> dict:
    """Point a task config at ``$AWARES_DATASETS_DIR/<task>.parquet`` when the variable is set. A missing
    file is an error when ``required`` (the tasks of ``tasks_config``); otherwise the task keeps its hub
    dataset, said in the log."""
    name = config.get("task")
    if not isinstance(name, str):  # a group's config lists its tasks
        return config
    path = offline_parquet(name)
    if path is None:
        if name in GENERATED_TASKS:
            raise FileNotFoundError(
                f"task '{name}' has no hub dataset: generate it with `{GENERATED_TASKS[name]} --out DIR` "
                f"and set {DATASETS_ENV}=DIR")
        return config
    if not path.is_file():
        if not required:
            from loguru import logger

            logger.info(f"awares: {DATASETS_ENV} has no {path.name}: task '{name}' reads its hub dataset")
            return config
        raise FileNotFoundError(
            f"{DATASETS_ENV} is set, but the data file for task '{name}' does not exist: {path} "
            f"(write it with `python -m awares_lmms.data.export_datasets --out {path.parent}`, "
            f"or unset {DATASETS_ENV} to read the hub dataset)"
        )
    split = config.get("test_split") or "test"
    config = dict(config)
    config["dataset_path"] = "parquet"
    config.pop("dataset_name", None)
    # Replaced whole: the hub options (token: True, ...) mean nothing to the parquet builder.
    config["dataset_kwargs"] = {"data_files": {split: str(path)}}
    return config


# ----------------------------------------------------------------------------- lmms-eval's task index, cached

# The index of lmms-eval's own task tree: parsing its ~1900 YAMLs costs about 5 s of every run's start
# (and of every TaskManager a process builds); listing their sizes and times costs ~50 ms.
_BUILTIN_INDEX: dict[str, dict] = {}


def _builtin_tasks_dir() -> str:
    import lmms_eval.tasks

    return _real(os.path.dirname(os.path.abspath(lmms_eval.tasks.__file__)))


def _yaml_fingerprint(task_dir: str) -> str:
    """Every YAML under ``task_dir`` (relative path, size, modification time), hashed."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(task_dir):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".yaml"):
                path = os.path.join(root, name)
                try:
                    stat = os.stat(path)
                    facts = f"{stat.st_size}\0{stat.st_mtime_ns}"
                except OSError:  # gone while listed: the index is rebuilt, and lmms-eval meets it there
                    facts = f"unreadable {os.getpid()} {id(digest)}"
                digest.update(f"{os.path.relpath(path, task_dir)}\0{facts}\n".encode())
    return digest.hexdigest()


def task_index_cache_file() -> Path:
    """Where the built-in task index is kept between processes (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "awares_lmms" / "lmms_eval_task_index.json"


def cached_task_index(task_dir: str, build, cache_file: Path | None = None) -> dict:
    """``build()`` (the index of the YAMLs under ``task_dir``), reused while no YAML there changed: from
    this process's memory, else from ``cache_file``, else built and written there. An unreadable or
    unwritable cache file only costs the time; an index that does not survive JSON is not kept."""
    try:
        version = importlib.metadata.version("lmms_eval")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    key = f"lmms-eval {version}|{_real(task_dir)}|{_yaml_fingerprint(task_dir)}"
    index = _BUILTIN_INDEX.get(key)
    if index is None and cache_file is not None:
        try:
            stored = json.loads(cache_file.read_text(encoding="utf-8"))
            index = stored["index"] if stored.get("key") == key and isinstance(stored.get("index"), dict) else None
        except (OSError, ValueError, AttributeError, KeyError):
            index = None
    if index is None:
        built = dict(build())
        index = json.loads(json.dumps(built))
        if index != built:  # a name or value JSON would change: use it, keep nothing
            return built
        if cache_file is not None:
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
                tmp.write_text(json.dumps({"key": key, "index": index}), encoding="utf-8")
                tmp.replace(cache_file)
            except OSError:
                pass
    _BUILTIN_INDEX.clear()  # one tree, one version: the newest
    _BUILTIN_INDEX[key] = index
    return copy.deepcopy(index)


# ----------------------------------------------------------------------------- the patch


def _patch_task_manager(task_manager_cls) -> None:
    if getattr(task_manager_cls, _MARK, False):
        return
    original_initialize = task_manager_cls.initialize_tasks
    original_get_config = task_manager_cls._get_config
    original_index = task_manager_cls._get_task_and_group

    def _get_task_and_group(self, task_dir):
        if _real(task_dir) != _builtin_tasks_dir():
            return original_index(self, task_dir)
        return cached_task_index(task_dir, lambda: original_index(self, task_dir), task_index_cache_file())

    def initialize_tasks(self, include_path=None, include_defaults=True):
        paths = _as_list(include_path)
        extras = list(_EXTRA_INCLUDE)
        if getattr(self, "model_name", None) == "awares":
            # Stock entry points (`python -m lmms_eval`, `accelerate launch -m lmms_eval`, `lmms-eval`)
            # with --model awares get the AwaRes tasks too: the model's rtr has no other place to go.
            extras.append(str(tasks_dir()))
        for extra in extras:
            if all(_real(p) != _real(extra) for p in paths):
                paths.append(extra)
        index = original_initialize(self, include_path=paths or None, include_defaults=include_defaults)
        if any(_is_tasks_dir(p) for p in paths):
            # Our directory wins over built-ins (and over other include paths) on name clashes.
            index.update(self._get_task_and_group(str(tasks_dir()) + os.sep))
        return index

    def _get_config(self, name):
        config = original_get_config(self, name)
        entry = self.task_index.get(name) if isinstance(self.task_index, dict) else None
        yaml_path = entry.get("yaml_path", -1) if entry else -1
        if isinstance(config, dict) and yaml_path != -1:
            config = apply_offline_dataset(config, required=_inside_tasks_dir(yaml_path))
        return config

    initialize_tasks.__wrapped__ = original_initialize
    _get_config.__wrapped__ = original_get_config
    _get_task_and_group.__wrapped__ = original_index
    task_manager_cls.initialize_tasks = initialize_tasks
    task_manager_cls._get_config = _get_config
    task_manager_cls._get_task_and_group = _get_task_and_group
    setattr(task_manager_cls, _MARK, True)


# ----------------------------------------------------------------------------- the task layer


def _patch_configurable_task(task_cls) -> None:
    """The task layer's entry points on ``ConfigurableTask`` (see the module docstring). Each wrapper
    defers to the original on a task that is not layered."""
    if getattr(task_cls, _MARK, False):
        return
    from awares_lmms.plugin import task_layer

    originals = {name: getattr(task_cls, name) for name in
                 ("download", "doc_to_text", "doc_to_visual", "doc_to_target", "process_results", "apply_filters")}

    def download(self, *args, **kwargs):
        wanted = task_layer.model_wants_layer(getattr(self, "model_name", None))
        if wanted:
            task_layer.check_output_type(self)  # before any data is read
            _patch_evaluate()  # tasks are built inside simple_evaluate: the evaluator is loaded
        outcome = originals["download"](self, *args, **kwargs)
        if wanted:
            task_layer.layer_task(self)
        return outcome

    def guard(name, guarded):
        original = originals[name]

        def method(self, *args, **kwargs):
            if not task_layer.is_layered(self):
                return original(self, *args, **kwargs)
            return guarded(original, self, *args, **kwargs)

        method.__name__ = name
        method.__wrapped__ = original
        return method

    def apply_filters(self):
        if not task_layer.is_layered(self) or not hasattr(self, "_filters"):
            return originals["apply_filters"](self)
        for ensemble in self._filters:
            task_layer.guarded_filter(type(ensemble).apply, ensemble, self, self._instances, self.task_docs)
        return None

    download.__wrapped__ = originals["download"]
    apply_filters.__wrapped__ = originals["apply_filters"]
    task_cls.download = download
    task_cls.apply_filters = apply_filters
    task_cls.doc_to_text = guard("doc_to_text", task_layer.guarded_doc_to_text)
    task_cls.doc_to_visual = guard("doc_to_visual", task_layer.guarded_doc_to_visual)
    task_cls.doc_to_target = guard("doc_to_target", task_layer.guarded_doc_to_target)
    task_cls.process_results = guard("process_results", task_layer.guarded_process_results)
    setattr(task_cls, _MARK, True)


def _patch_evaluate() -> None:
    """``lmms_eval.evaluator.evaluate``: layer the task dict when the model declares the layer. Called
    once the evaluator is fully imported; while it is still being imported (``evaluate`` not defined
    yet) this waits for the next call."""
    evaluator_module = sys.modules.get("lmms_eval.evaluator")
    if evaluator_module is None:
        import lmms_eval.evaluator as evaluator_module
    if getattr(evaluator_module, "evaluate", None) is None or getattr(evaluator_module.evaluate, _MARK, False):
        return
    from awares_lmms.plugin import task_layer

    original = evaluator_module.evaluate

    def evaluate(*args, **kwargs):
        lm = kwargs.get("lm", args[0] if args else None)
        task_dict = kwargs.get("task_dict", args[1] if len(args) > 1 else None)
        if task_layer.model_wants_layer(lm) and isinstance(task_dict, dict):
            task_layer.clear()
            task_layer.layer_groups(task_dict)
        return original(*args, **kwargs)

    evaluate.__wrapped__ = original
    setattr(evaluate, _MARK, True)
    evaluator_module.evaluate = evaluate


def install_task_layer(evaluator: bool = True) -> None:
    """Install the task layer's patches now. ``evaluator=False`` leaves ``evaluate`` to the first layered
    task build (used while ``lmms_eval.tasks`` itself is being imported, possibly from inside the
    evaluator's own import). The model class calls this when it is built. Idempotent."""
    from lmms_eval.api.task import ConfigurableTask

    _patch_configurable_task(ConfigurableTask)
    if evaluator:
        _patch_evaluate()


class _PatchAfterExec(importlib.abc.Loader):
    """Wraps the real loader of ``lmms_eval.tasks``; patches ``TaskManager`` right after it runs."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        # Put the real loader back first so tooling (inspect, linecache) sees the normal one.
        module.__loader__ = self._inner
        if module.__spec__ is not None:
            module.__spec__.loader = self._inner
        self._inner.exec_module(module)
        _patch_task_manager(module.TaskManager)
        install_task_layer(evaluator=False)

    def __getattr__(self, item):
        return getattr(self._inner, item)


class _DeferredPatchFinder(importlib.abc.MetaPathFinder):
    """One-shot finder: only ever answers for ``lmms_eval.tasks``, then removes itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET_MODULE:
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _PatchAfterExec(spec.loader)
        return spec


# ----------------------------------------------------------------------------- results config

_RUN_PROTOCOL: dict = {}
_RUN_IDENTITY: dict = {}
_DOCUMENT_ERRORS: dict = {}
_DOCUMENT_COUNT: dict = {}
_OUTPUT_PROBLEMS: list = []
_TRACKER_MARK = "_awares_protocol_recorded"


def begin_evaluation() -> None:
    """Forget what the previous evaluation in this process recorded (its failed documents, output
    problems and protocol), so that a second run in one process (the ``lmms_eval`` command's ``main``
    called twice from Python) is judged on its own."""
    record_document_errors({})
    _OUTPUT_PROBLEMS.clear()
    _RUN_PROTOCOL.clear()
    _RUN_IDENTITY.clear()


def record_document_errors(errors: dict, total: int | None = None) -> None:
    """The documents the ``awares`` model could not answer in this process's last evaluation, per task
    (``[{"doc_id", "error"}]``), out of ``total``: written into the results as
    ``config.awares_document_errors`` / ``config.awares_documents`` and read by the ``lmms_eval``
    command to set its exit status."""
    _DOCUMENT_ERRORS.clear()
    _DOCUMENT_ERRORS.update(errors)
    _DOCUMENT_COUNT.clear()
    if total is not None:
        _DOCUMENT_COUNT["total"] = total


def record_scoring_error(task: str, doc_id, error: str) -> None:
    """A document the task could not score (after the model answered it): counted with the documents
    that could not be answered."""
    items = _DOCUMENT_ERRORS.setdefault(task, [])
    for item in items:
        if item["doc_id"] == doc_id:  # already failed when it was answered: one failure, two causes
            item["error"] += f"; {error}"
            return
    items.append({"doc_id": doc_id, "error": error})


def documents_answered() -> tuple[int, int | None]:
    """(documents that failed, documents asked) in this process's last ``awares`` evaluation."""
    return sum(len(v) for v in _DOCUMENT_ERRORS.values()), _DOCUMENT_COUNT.get("total")


def document_errors() -> dict:
    return {task: list(items) for task, items in _DOCUMENT_ERRORS.items()}


def record_run_protocol(summary: dict, identity: dict | None = None) -> None:
    """Remember the resolved protocol (and the run identity, ``core.identity``) of the ``awares`` model built
    in this process, and make sure the results file lmms-eval writes next carries them as
    ``config.awares_protocol`` and ``config.awares_identity``."""
    _RUN_PROTOCOL.clear()
    _RUN_PROTOCOL.update(summary)
    _RUN_IDENTITY.clear()
    _RUN_IDENTITY.update(identity or {})
    _patch_evaluation_tracker()


def output_problems() -> list[str]:
    """What went wrong writing this process's output files (checked after each save); the
    ``lmms_eval`` command exits 1 when this is not empty."""
    return list(_OUTPUT_PROBLEMS)


def _unique_datetime(datetime_str: str) -> str:
    # lmms-eval names both files after the start second and the model: two runs started in the same
    # second on one --output_path would overwrite one results file and append to one samples file.
    # The process id and a few random hex digits make the name this run's own.
    return f"{datetime_str}_{os.getpid()}{secrets.token_hex(2)}"


def _check_results_file(path: Path) -> str | None:
    if not path.is_file():
        return f"{path} was not written"
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{path} is incomplete or unreadable ({type(exc).__name__}: {exc})"
    return None


def _check_samples_file(path: Path, expected: int) -> str | None:
    if not path.is_file():
        return f"{path} was not written"
    lines = 0
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                json.loads(line)
                lines += 1
    except (OSError, ValueError) as exc:
        return f"{path}:{lineno} is cut or unreadable ({type(exc).__name__})"
    if lines != expected:
        return f"{path} has {lines} lines for {expected} documents"
    return None


def _record_output_problem(problem: str | None) -> None:
    if problem:
        _OUTPUT_PROBLEMS.append(problem)


def _patch_evaluation_tracker() -> None:
    """Two methods of ``EvaluationTracker`` (private API) wrapped, for failures that stock lmms-eval
    only logs as a warning and then exits 0 on:

    * ``save_results_aggregated`` adds ``config.awares_protocol`` and ``config.awares_document_errors``
      (lmms-eval builds ``results["config"]`` after the evaluation with no model hook), makes the file
      name this run's own (``_unique_datetime``), and checks that the written file parses;
    * ``save_results_samples`` checks that the samples file has one parseable line per document.

    A failed check is recorded (``output_problems``) and the ``lmms_eval`` command exits 1.
    """
    # Imported here: this module is imported while lmms-eval builds its model registry.
    from lmms_eval.loggers.evaluation_tracker import EvaluationTracker

    if getattr(EvaluationTracker, _TRACKER_MARK, False):
        return
    original_results = EvaluationTracker.save_results_aggregated
    original_samples = EvaluationTracker.save_results_samples

    def save_results_aggregated(self, results, samples, datetime_str):
        if _RUN_PROTOCOL and isinstance(results, dict):
            config = results.setdefault("config", {})
            config["awares_protocol"] = dict(_RUN_PROTOCOL)
            config["awares_identity"] = json.loads(json.dumps(_RUN_IDENTITY, default=str))
            config["awares_document_errors"] = document_errors()
            config["awares_documents"] = _DOCUMENT_COUNT.get("total")
        datetime_str = _unique_datetime(datetime_str)
        outcome = original_results(self, results, samples, datetime_str)
        if self.output_path:
            path = (Path(self.output_path) / self.general_config_tracker.model_name_sanitized
                    / f"{datetime_str.replace(':', '-')}_results.json")
            _record_output_problem(_check_results_file(path))
        return outcome

    def save_results_samples(self, task_name, samples):
        outcome = original_samples(self, task_name, samples)
        if self.output_path:
            path = (Path(self.output_path) / self.general_config_tracker.model_name_sanitized
                    / f"{self.date_id}_samples_{task_name}.jsonl")
            _record_output_problem(_check_samples_file(path, len(samples)))
        return outcome

    save_results_aggregated.__wrapped__ = original_results
    save_results_samples.__wrapped__ = original_samples
    EvaluationTracker.save_results_aggregated = save_results_aggregated
    EvaluationTracker.save_results_samples = save_results_samples
    setattr(EvaluationTracker, _TRACKER_MARK, True)


def repeated_model_args(arg_string) -> list[str]:
    """The keys a ``--model_args`` string names more than once, split exactly as lmms-eval splits it
    (``lmms_eval.utils._smart_comma_split``: commas inside quotes or braces do not separate)."""
    from lmms_eval.utils import _smart_comma_split

    if not isinstance(arg_string, str) or not arg_string.strip():
        return []
    keys = [item.split("=", 1)[0].strip() for item in _smart_comma_split(arg_string.strip()) if "=" in item]
    return sorted({k for k in keys if keys.count(k) > 1})


def install_output_checks() -> None:
    """Patch lmms-eval's ``EvaluationTracker`` now (the ``lmms_eval`` command does, for every model)."""
    _patch_evaluation_tracker()


def install() -> None:
    """Install the TaskManager patches now, or as soon as ``lmms_eval.tasks`` is imported. Idempotent."""
    module = sys.modules.get(_TARGET_MODULE)
    if module is not None and hasattr(module, "TaskManager"):
        _patch_task_manager(module.TaskManager)
        install_task_layer(evaluator="lmms_eval.evaluator" in sys.modules)  # never imports it from here
        return
    if not any(isinstance(f, _DeferredPatchFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _DeferredPatchFinder())
