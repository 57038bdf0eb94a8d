"""``python dist_worker.py FAIRSEQ_TRAIN_ARGS...``: fairseq-train, and at every checkpoint each worker writes its
own quantizer state (every QuantMeasure buffer and parameter, the bit-operation account and the recipe's bits) to
``SAVE_DIR/ranks/rank{R}-update{N}.pt``, so a test can compare the workers. At module level, so that
the processes fairseq spawns (which import this file again) dump too."""
from pathlib import Path

import torch
from fairseq import trainer as fairseq_trainer

_consolidate = fairseq_trainer.Trainer.consolidate_optimizer


def _dump_then_consolidate(self):
    from fairseq_quant.core.quant_measure import QuantMeasure

    model = self.model.module.module if hasattr(self.model, "module") and hasattr(self.model.module, "module") \
        else getattr(self.model, "module", self.model)
    state = {}
    for name, q in model.named_modules():
        if isinstance(q, QuantMeasure):
            for key, t in [*q.named_buffers(recurse=False), *q.named_parameters(recurse=False)]:
                state[f"{name}.{key}"] = t.detach().clone()
    state["bitops_totals"] = torch.tensor(model.bitops_counter.totals(), dtype=torch.float64)
    state["bits"] = torch.tensor([model.quant_recipe.weight.bits, model.quant_recipe.input.bits])
    dump = Path(self.cfg.checkpoint.save_dir) / "ranks"
    dump.mkdir(exist_ok=True)
    torch.save(state, dump / f"rank{self.data_parallel_rank}-update{self.get_num_updates()}.pt")
    return _consolidate(self)


fairseq_trainer.Trainer.consolidate_optimizer = _dump_then_consolidate

if __name__ == "__main__":
    from fairseq_cli.train import cli_main

    cli_main()
