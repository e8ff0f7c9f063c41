#!/usr/bin/env python
"""Pretrain the SYNTHETIC-world models shipped in ``spectralmoe/weights/`` (CPU, deterministic).

    python scripts/pretrain_synthetic.py --out spectralmoe/weights --seed 0
    python scripts/pretrain_synthetic.py --out spectralmoe/weights --seed 0 --verify   # rerun, compare SHA-256

The committed weights were written by the first command (their ``PROVENANCE.json`` records it,
with the library versions and the SHA-256 of each file). All the work is in
``spectralmoe.pretrain.run``; this file only names the command.
"""

import sys

from spectralmoe.pretrain.run import main

if __name__ == "__main__":
    sys.exit(main(prog="python scripts/pretrain_synthetic.py"))
