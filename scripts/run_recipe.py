#!/usr/bin/env python
"""Run an hfcompress recipe; works as-is under ``accelerate launch``.

    accelerate launch --num_processes 2 scripts/run_recipe.py recipes/sst2_quickstart.yaml
    python scripts/run_recipe.py recipes/sst2_quickstart.yaml stages.student.training.num_train_epochs=1
"""

import sys

from hfcompress.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
