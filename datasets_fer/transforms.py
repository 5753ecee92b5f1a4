"""The weak, strong and evaluation views of a face image (ImageNet normalisation, as the MS-Celeb backbone expects).

weak   = resize to ``img_size`` + random crop with reflect padding ``img_size * (1 - crop_ratio)`` + horizontal flip
strong = weak + RandAugment (USB's implementation, 3 ops at magnitude 5, as in USB's image datasets)
eval   = resize to ``img_size``
"""

from torchvision import transforms

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _finish():
    return [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]


def _weak_geometry(img_size, crop_ratio):
    pad = int(img_size * (1 - crop_ratio))
    return [
        transforms.Resize((img_size, img_size)),
        transforms.RandomCrop(img_size, padding=pad, padding_mode="reflect"),
        transforms.RandomHorizontalFlip(),
    ]


def weak_transform(img_size: int, crop_ratio: float = 0.875):
    return transforms.Compose([*_weak_geometry(img_size, crop_ratio), *_finish()])


def strong_transform(img_size: int, crop_ratio: float = 0.875):
    from semilearn.datasets.augmentation import RandAugment

    return transforms.Compose([*_weak_geometry(img_size, crop_ratio), RandAugment(3, 5), *_finish()])


def eval_transform(img_size: int):
    return transforms.Compose([transforms.Resize((img_size, img_size)), *_finish()])
