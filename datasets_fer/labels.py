"""One canonical label order for every FER dataset, and each dataset's mapping into it.

The canonical order is AffectNet's: 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt.
Seven-class datasets (RAF-DB, CK+, FER2013 without contempt) use indices 0-6; eight-class ones use 0-7. Every loader
converts its source codes with one of the tables below, so a class index means the same expression everywhere.
"""

CANONICAL = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")

#: RAF-DB ``list_patition_label.txt`` code (1-7) -> canonical index.
#: RAF codes: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral.
RAFDB_TO_CANONICAL = {1: 3, 2: 4, 3: 5, 4: 1, 5: 2, 6: 6, 7: 0}
RAFDB_NAMES = {1: "Surprise", 2: "Fear", 3: "Disgust", 4: "Happiness", 5: "Sadness", 6: "Anger", 7: "Neutral"}

#: FER2013 ``emotion`` column (0-6) -> canonical index.
FER2013_TO_CANONICAL = {0: 6, 1: 5, 2: 4, 3: 1, 4: 2, 5: 3, 6: 0}

#: FERPlus vote column order (neutral, happiness, surprise, sadness, anger, disgust, fear, contempt) -> canonical.
FERPLUS_TO_CANONICAL = {0: 0, 1: 1, 2: 3, 3: 2, 4: 6, 5: 5, 6: 4, 7: 7}

#: CK+ emotion code (0-7) -> canonical index (2 = contempt is excluded by the 636-image protocol).
CKPLUS_TO_CANONICAL = {0: 0, 1: 6, 2: 7, 3: 5, 4: 4, 5: 1, 6: 2, 7: 3}

#: AffectNet expression code (0-7) -> canonical index; 8 None, 9 Uncertain, 10 No-Face are dropped.
AFFECTNET_TO_CANONICAL = {k: k for k in range(8)}


def class_names(num_classes: int):
    """Canonical names of the first ``num_classes`` classes (7 or 8)."""
    if num_classes not in (7, 8):
        raise ValueError(f"FER datasets have 7 or 8 classes, not {num_classes}")
    return list(CANONICAL[:num_classes])
