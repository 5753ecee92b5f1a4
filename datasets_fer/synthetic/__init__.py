"""Deterministic synthetic facial-expression data, written in the real datasets' on-disk layouts.

Real FER datasets are licensed and cannot be downloaded automatically, so the demo and the tests use procedurally
drawn cartoon faces instead. Three modules, imported one way (layouts -> writing -> faces):

* :mod:`.faces`: the renderer, :func:`render_face`, and the reproducible streams of faces, :func:`face_rng` and
  :func:`iter_faces` (image ``i`` depends only on ``(seed, stream, i, label, size)``);
* :mod:`.writing`: what the writers share: the marker :data:`MARKER_NAME` naming the generator and its
  :data:`VERSION`, atomic writing (built in a hidden temporary folder, moved into place when complete, the marker
  last), :func:`largest_remainder` and the argument checks;
* :mod:`.layouts`: one writer per dataset, :func:`write_rafdb` (three layouts), :func:`write_ckplus`,
  :func:`write_ferplus` (two), :func:`write_affectnet` (two), and :func:`ensure_demo_rafdb`, which writes the
  RAF-DB demo on first use (``demo_data: True``; ``remop-usb demo-data`` writes any of them).

Same arguments give byte-identical files (for a given Pillow/libjpeg build, which does the JPEG encoding). The
public names of the three modules are importable from here (``from datasets_fer.synthetic import write_rafdb``).
"""

from .faces import ACTION_RANGES, check_actions, face_rng, iter_faces, render_face
from .layouts import (AFFECTNET_DROPPED, AFFECTNET_LAYOUTS, AFFECTNET_TRAIN_COUNTS, AFFECTNET_VAL_COUNTS,
                      CKPLUS_SEQUENCE_COUNTS, CKPLUS_UNLABELED, FERPLUS_EXTRA_ROWS, FERPLUS_LAYOUTS,
                      FERPLUS_TRAIN_COUNTS, RAFDB_LAYOUTS, RAFDB_TEST_COUNTS, RAFDB_TRAIN_COUNTS, ensure_demo_rafdb,
                      rafdb_class_counts, write_affectnet, write_ckplus, write_ferplus, write_rafdb)
from .writing import GENERATOR, JPEG_QUALITY, MARKER_NAME, VERSION, largest_remainder, read_marker

__all__ = [
    # faces
    "ACTION_RANGES", "check_actions", "face_rng", "iter_faces", "render_face",
    # writing
    "GENERATOR", "JPEG_QUALITY", "MARKER_NAME", "VERSION", "largest_remainder", "read_marker",
    # layouts
    "AFFECTNET_DROPPED", "AFFECTNET_LAYOUTS", "AFFECTNET_TRAIN_COUNTS", "AFFECTNET_VAL_COUNTS",
    "CKPLUS_SEQUENCE_COUNTS", "CKPLUS_UNLABELED", "FERPLUS_EXTRA_ROWS", "FERPLUS_LAYOUTS", "FERPLUS_TRAIN_COUNTS",
    "RAFDB_LAYOUTS", "RAFDB_TEST_COUNTS", "RAFDB_TRAIN_COUNTS", "ensure_demo_rafdb", "rafdb_class_counts",
    "write_affectnet", "write_ckplus", "write_ferplus", "write_rafdb",
]
