"""Train a USB algorithm on a FER dataset: ``python train.py --c config/remop_fixmatch_rafdb.yaml [--key value ...]``.

Command-line flags override the YAML file; ``python train.py --c FILE --help`` lists every key, including the
chosen algorithm's.
"""

import sys

from remop_usb.launch import main

if __name__ == "__main__":
    sys.exit(main())
