"""``python -m spectralmoe.pretrain --out spectralmoe/weights --seed 0`` (see ``spectralmoe.pretrain.run``)."""

import sys

from spectralmoe.pretrain.run import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m spectralmoe.pretrain"))
