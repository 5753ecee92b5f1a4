"""The weak, strong and evaluation views of a face image (ImageNet normalisation, as the MS-Celeb backbone expects).

weak   = resize to ``img_size`` + random crop with reflect padding ``img_size * (1 - crop_ratio)`` + horizontal flip
strong = weak + RandAugment (USB's implementation, 3 ops at magnitude 5, as in USB's image datasets)
eval   = resize to ``img_size``

The crop has two options (config keys): ``crop_prob`` (probability that it is applied at all; 1: always, USB's) and
``crop_padding_mode`` (``reflect``, USB's, or ``constant``: zeros). The ReMoP authors' released code applies
``RandomCrop(224, padding=8)`` with zero padding inside a ``RandomApply`` of p = 0.5 (``remop_preset: official``).
"""

from torchvision import transforms

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _finish():
    return [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]


#: ``crop_padding_mode`` values: torchvision's padding modes for the weak crop (``constant`` pads with zeros)
CROP_PADDING_MODES = ("reflect", "constant")


def _crop(img_size, crop_ratio, crop_prob, padding_mode):
    if padding_mode not in CROP_PADDING_MODES or not 0.0 <= crop_prob <= 1.0:
        raise ValueError(f"crop_padding_mode must be one of {CROP_PADDING_MODES} and crop_prob in [0, 1]; got "
                         f"{padding_mode!r}, {crop_prob}")
    crop = transforms.RandomCrop(img_size, padding=int(img_size * (1 - crop_ratio)), padding_mode=padding_mode)
    return crop if crop_prob == 1.0 else transforms.RandomApply([crop], p=crop_prob)


def _weak_geometry(img_size, crop_ratio, crop_prob, padding_mode):
    return [
        transforms.Resize((img_size, img_size)),
        _crop(img_size, crop_ratio, crop_prob, padding_mode),
        transforms.RandomHorizontalFlip(),
    ]


def weak_transform(img_size: int, crop_ratio: float = 0.875, crop_prob: float = 1.0, padding_mode: str = "reflect"):
    return transforms.Compose([*_weak_geometry(img_size, crop_ratio, crop_prob, padding_mode), *_finish()])


def strong_transform(img_size: int, crop_ratio: float = 0.875, crop_prob: float = 1.0,
                     padding_mode: str = "reflect"):
    from semilearn.datasets.augmentation import RandAugment

    return transforms.Compose([*_weak_geometry(img_size, crop_ratio, crop_prob, padding_mode), RandAugment(3, 5),
                               *_finish()])


def eval_transform(img_size: int):
    return transforms.Compose([transforms.Resize((img_size, img_size)), *_finish()])
