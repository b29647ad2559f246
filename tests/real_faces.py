"""The tests' name for torch_badnet.data.real_faces (the real lab material, face labels, augmentation)."""

from torch_badnet.data.real_faces import (  # noqa: F401
    AUGMENT_BLOCK,
    LAB_LAYOUT,
    LABEL_IN_NAME,
    MAX_SHIFT,
    REAL_DIR,
    augment,
    augment_indexed,
    face_files,
    face_kind,
    face_label,
    write_lab_files,
)
