"""fairseq cannot load its own checkpoints under torch >= 2.6.

The bug: ``fairseq.checkpoint_utils.load_checkpoint_to_cpu`` calls ``torch.load(f, map_location=cpu)``.
Since torch 2.6 that unpickles with ``weights_only=True``, which refuses the ``argparse.Namespace`` that
fairseq checkpoints hold (``args`` of old ones such as the published roberta.base; ``cfg.model`` of models
configured through ``add_args``, RoBERTa among them) and the numpy scalars some best-checkpoint metrics are
stored as: ``fairseq-train --restore-file``, ``checkpoint_utils.load_model_ensemble_and_task`` and
``RobertaModel.from_pretrained`` (the hub interface) all fail with ``UnpicklingError: Weights only load
failed`` (fairseq issue #5603).

The fix keeps ``weights_only=True``: it registers fairseq-quant's allowlist
(``fairseq_quant.plugin.checkpoint.FAIRSEQ_SAFE_GLOBALS``) with ``torch.serialization.add_safe_globals``, and wraps
``load_checkpoint_to_cpu`` so that a file holding any other global is refused with an
``UnsafeCheckpointError`` naming the file and the globals. The trainer, ``load_model_ensemble_and_task``
and the hub interface all reach the loader through the module attribute replaced here.

Other ``torch.load`` calls in fairseq get the allowlist but not the clearer error: ``load_ema_from_checkpoint``
and the speech and vocoder loaders. The state rank 0 broadcasts to the other ranks of a distributed run is
``broadcast_object_weights_only``'s.
"""
import functools

from fairseq import checkpoint_utils

__all__ = ["apply"]


def apply() -> None:
    """Register the allowlist and wrap ``checkpoint_utils.load_checkpoint_to_cpu`` (idempotent)."""
    # Imported here, not at the top: importing fairseq_quant applies the patches, this one included.
    from fairseq_quant.plugin.checkpoint import raising_unsafe_checkpoint_error, register_safe_globals

    register_safe_globals()
    load_checkpoint_to_cpu = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(load_checkpoint_to_cpu, "_refuses_unsafe_globals", False):
        return

    @functools.wraps(load_checkpoint_to_cpu)
    def refusing_unsafe_globals(path, *args, **kwargs):
        with raising_unsafe_checkpoint_error(path):
            return load_checkpoint_to_cpu(path, *args, **kwargs)

    refusing_unsafe_globals._refuses_unsafe_globals = True
    checkpoint_utils.load_checkpoint_to_cpu = refusing_unsafe_globals
