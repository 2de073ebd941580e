"""Run by tests/test_distributed.py under torchrun: one tinykd run, then every rank saves what it holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file

import tinykd


def main() -> None:
    recipe_path, out = sys.argv[1], Path(sys.argv[2])
    result = tinykd.run(recipe_path, out=out)
    state = PartialState()
    rank = state.process_index
    weights = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    save_file(weights, str(out.parent / f"{out.name}-rank{rank}.safetensors"))
    info = {"rank": rank, "world_size": state.num_processes, "backend": str(state.backend),
            "distributed_type": str(state.distributed_type.value), "metrics": result.metrics}  # fmt: skip
    (out.parent / f"{out.name}-rank{rank}.json").write_text(json.dumps(info))
    state.wait_for_everyone()


if __name__ == "__main__":
    main()
