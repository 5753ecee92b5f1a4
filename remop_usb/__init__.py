"""remop-usb: class-imbalanced semi-supervised facial expression recognition for USB (semilearn 0.3.2).

ReMoP (Regularized Mixture of Predictions) and the methods it is compared with, FER datasets with the paper's
imbalanced splits, and a launcher: ``python train.py --c config/remop_fixmatch_rafdb.yaml``.
Importing this package is cheap; USB is imported and patched by :func:`remop_usb.registry.load`.
"""

__version__ = "0.1.0"
