"""lmms-eval entry point (group ``lmms_eval.models``): makes ``--model awares`` resolve, no fork needed.

lmms-eval imports this module while building its model registry, so it stays light: the model
class is named by path and imported only when an evaluation asks for it.
"""

from __future__ import annotations


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    # Let the AwaRes task suite (tasks_config/) win task-name clashes and read local parquet
    # files when AWARES_DATASETS_DIR is set; see awares_lmms/hooks.py. Cheap (the patch is
    # deferred until lmms_eval.tasks is imported) and idempotent. A failure here must not cost
    # lmms-eval its model registry, so it is only reported.
    try:
        from awares_lmms.plugin import hooks

        hooks.install()
    except Exception as exc:  # noqa: BLE001  # pragma: no cover - must not break the registry
        import warnings

        warnings.warn(f"awares_lmms: task hooks not installed: {exc!r}", RuntimeWarning, stacklevel=2)

    return [
        ModelManifest(
            model_id="awares",
            simple_class_path=None,
            chat_class_path="awares_lmms.plugin.model.AwaresLMM",
        )
    ]
