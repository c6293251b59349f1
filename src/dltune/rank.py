"""One process of a distributed run, as torchrun starts it (`python -m dltune.rank CONFIG`): join the process group,
train this rank's part, and leave the result where this machine's launcher reads it (dltune.parallel.launch)."""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import torch
import torch.distributed as dist

from dltune.config import load_config
from dltune.errors import DltuneError
from dltune.parallel.launch import ERROR, RESULT
from dltune.parallel.ranks import Ranks
from dltune.train import train_ranked


def main(argv: list[str]) -> int:
    ranks = Ranks.from_env()
    try:
        config = load_config(argv[0])
        cuda = config.train.device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(ranks.local_rank)
        backend = config.parallel.backend if config.parallel.backend != "auto" else "nccl" if cuda else "gloo"
        dist.init_process_group(backend)
        try:
            result = train_ranked(config, ranks)
        finally:
            dist.destroy_process_group()
    except DltuneError as e:  # bad input found in a rank (the user's code, say): the launcher shows the message
        (ranks.folder / ERROR.format(rank=ranks.rank)).write_text(str(e))
        return 2
    if ranks.writes:
        state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
        tmp = ranks.folder / f".{RESULT}"
        torch.save({"result": replace(result, model=None), "state": state}, tmp)
        os.replace(tmp, ranks.folder / RESULT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
