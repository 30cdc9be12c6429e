"""An algorithm's model tarball, unpacked for a run and mounted read-only at /opt/ml/model
(grand-challenge's place for it).

The tarball (tar, optionally gzip/bz2/xz) is checked before anything is written: its entry
count and what it expands to are capped (`HELDOUT_MAX_MODEL_*`), then it is unpacked by the
same checked extraction as datasets (`server.storage.extract_tar`: no absolute names, no
'..', no links leading out, no devices, no setuid bits). Files end up world-readable, so
the image's non-root user can read them; the mount itself is read-only.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from server.storage import extract_tar

MODEL_MOUNT = "/opt/ml/model"


class ModelError(ValueError):
    """The model tarball is unusable; the message names the rule, never a file's content."""


def extract_model(archive: Path, dest: Path, *, max_bytes: int, max_entries: int) -> Path:
    """Unpack `archive` into dest (created) and return dest; ModelError when refused."""
    total = entries = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # streams through the compression: a bomb stops here
                entries += 1
                total += max(member.size, 0)
                if entries > max_entries:
                    raise ModelError(f"the model tarball holds more than {max_entries} entries")
                if total > max_bytes:
                    raise ModelError(
                        f"the model tarball expands to more than {max_bytes // 1024**2} MiB"
                    )
        dest.mkdir(parents=True, exist_ok=True)
        extract_tar(archive, dest)
    except (tarfile.TarError, EOFError, OSError) as exc:
        # TarError messages name the offending entry: the participant's own file names.
        raise ModelError(f"the model tarball cannot be unpacked: {exc}") from None
    for root, dirs, files in os.walk(dest):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            path = os.path.join(root, f)
            if not os.path.islink(path):
                os.chmod(path, 0o644)
    dest.chmod(0o755)
    return dest
