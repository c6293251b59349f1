"""One process of a distributed run, as torchrun starts it (`python -m dltune.run.rank CONFIG`): join the process group,
train this rank's part, and leave the result where this machine's launcher reads it (dltune.parallel.launch)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from dltune.errors import DltuneError
from dltune.experiment.config import load_config
from dltune.parallel.launch import ERROR, RESULT, WEIGHTS
from dltune.parallel.ranks import Ranks, backend_for
from dltune.run.loop import fit_ranked


def main(argv: list[str]) -> int:
    ranks = Ranks.from_env()
    try:
        config = load_config(argv[0])
        backend = backend_for(config.parallel.backend, config.train.device)
        if backend == "nccl":
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group(backend)
        try:
            result = fit_ranked(config, ranks)
        finally:
            dist.destroy_process_group()
    except DltuneError as e:  # bad input found in a rank (the user's code, say): the launcher shows the message
        (ranks.folder / ERROR.format(rank=ranks.rank)).write_text(str(e))
        return 2
    if ranks.writes:  # the result's fields as JSON (NaN kept, as the launcher's json reads it), then the weights
        fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
                  if f.name not in ("model", "config")}
        fields["divergence"] = dataclasses.asdict(result.divergence) if result.divergence is not None else None
        (ranks.folder / RESULT).write_text(json.dumps(fields))
        assert result.model is not None  # a run just trained holds its model
        state = {k: v.detach().contiguous().cpu() for k, v in result.model.state_dict().items()}
        save_file(state, str(ranks.folder / f".{WEIGHTS}"))
        os.replace(ranks.folder / f".{WEIGHTS}", ranks.folder / WEIGHTS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
