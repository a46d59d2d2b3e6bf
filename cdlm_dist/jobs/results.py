"""Where a job's results live, and the two ways they come back to the submitting machine.

A job runs in ``<storage>/<job_id>/`` on the node that runs its driver (the head node, unless
entrypoint resources move it). Everything the job creates there (``runs/<name>/`` for
``cdlm-train``, the sweep's folders for ``cdlm-sweep``, and ``job.json``) is its result; the
entries linked in from the uploaded code are not. ``storage`` is either

* a URI (``s3://bucket/prefix``, ``gs://...``, ``file:///shared/nfs``): the job uploads its
  results there when it ends and ``fetch`` downloads them with pyarrow (needs credentials on
  both sides), or
* a path on the cluster (default ``~/cdlm_jobs``): ``fetch`` copies it directly when this
  machine sees the same path (same host, shared filesystem), and otherwise runs a short export
  job that streams a tar.gz of it, base64-framed, through the job log, which reaches us over the
  same job-server port as everything else. Bounded by ``MAX_LOG_ARCHIVE_BYTES``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import TextIO

DEFAULT_STORAGE = "~/cdlm_jobs"
MANIFEST = "job.json"
# Entries of the uploaded code that outputs would land in: never linked into the job directory,
# so a job writes its own copy instead of the extracted package that jobs with the same code share.
OUTPUT_NAMES = frozenset({"runs", "outputs", "multirun", MANIFEST})
CHECKPOINT_DIR = "checkpoints"  # cdlm-train runner=local
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's and Tune's checkpoint folders

ARCHIVE_BEGIN = "CDLM-ARCHIVE-BEGIN"
ARCHIVE_LINE = "CDLM-ARCHIVE:"
ARCHIVE_END = "CDLM-ARCHIVE-END"
NOT_FOUND_MARK = "CDLM-RESULTS-NOT-FOUND"
TOO_BIG_MARK = "CDLM-RESULTS-TOO-BIG"
BASE64_CHARS_PER_LINE = 76
# Job logs are held in memory by the job server and by us; past this a bucket is the right tool.
MAX_LOG_ARCHIVE_BYTES = 256 * 1024 * 1024


class ResultsError(RuntimeError):
    """Results that cannot be found, read or trusted; the message says which and where."""


def is_uri(storage: str) -> bool:
    return "://" in storage


def join(storage: str, *parts: str) -> str:
    """``storage/part/...`` for URIs and paths alike (no ``~`` expansion: the cluster does it)."""
    return "/".join([storage.rstrip("/"), *parts])


def local_job_dir(storage: str, job_id: str) -> Path:
    """The directory a job runs in on its node: under ``storage``, or a scratch one for URIs."""
    if is_uri(storage):
        return Path(tempfile.gettempdir()) / "cdlm_jobs" / job_id
    return Path(storage).expanduser() / job_id


def result_entries(job_dir: Path) -> list[Path]:
    """What the job created: top-level entries that are not links to the uploaded code."""
    return sorted(p for p in job_dir.iterdir() if not p.is_symlink())


def _filesystem(uri: str):  # -> tuple[pyarrow.fs.FileSystem, str]
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises several types for bad schemes and credentials
        raise ResultsError(f"cannot open storage {uri}: {exc}") from exc


def upload(job_dir: Path, uri: str) -> None:
    """Copy a job's results to ``uri`` (called on the cluster when the job ends)."""
    from pyarrow import fs

    dest_fs, dest = _filesystem(uri)
    dest_fs.create_dir(dest, recursive=True)
    for entry in result_entries(job_dir):
        fs.copy_files(str(entry), f"{dest}/{entry.name}", source_filesystem=fs.LocalFileSystem(),
                      destination_filesystem=dest_fs)


def download(location: str, to: Path) -> list[str]:
    """Copy results from a URI or a locally visible path into ``to``; returns the entry names."""
    to.mkdir(parents=True, exist_ok=True)
    if not is_uri(location):
        src = Path(location).expanduser()
        if not src.is_dir():
            raise ResultsError(f"no results at {src}")
        names = []
        for entry in result_entries(src):
            if entry.is_dir():
                shutil.copytree(entry, to / entry.name, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(entry, to / entry.name)
            names.append(entry.name)
        return names
    from pyarrow import fs

    src_fs, src = _filesystem(location)
    if src_fs.get_file_info(src).type == fs.FileType.NotFound:
        raise ResultsError(f"no results at {location}")
    infos = src_fs.get_file_info(fs.FileSelector(src))
    fs.copy_files(src, str(to), source_filesystem=src_fs, destination_filesystem=fs.LocalFileSystem())
    return sorted(PurePosixPath(i.path).name for i in infos)


def pack(job_dir: Path, with_checkpoints: bool = True) -> bytes:
    """A tar.gz of the job's results (optionally without checkpoint folders)."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        dirs = PurePosixPath(info.name).parts[:None if info.isdir() else -1]
        if not with_checkpoints and any(is_checkpoint_dir(d) for d in dirs):
            return None  # a folder: tarfile then skips everything in it too
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for entry in result_entries(job_dir):
            tar.add(entry, arcname=entry.name, filter=keep)
    return buffer.getvalue()


def is_checkpoint_dir(name: str) -> bool:
    return name == CHECKPOINT_DIR or name.startswith(CHECKPOINT_PREFIX)


def write_archive_text(data: bytes, out: TextIO) -> None:
    """Frame ``data`` as marked base64 lines: one write per line, so other output cannot split one."""
    digest = hashlib.sha256(data).hexdigest()
    out.write(f"{ARCHIVE_BEGIN} {len(data)} {digest}\n")
    text = base64.b64encode(data).decode("ascii")
    for i in range(0, len(text), BASE64_CHARS_PER_LINE):
        out.write(f"{ARCHIVE_LINE}{text[i:i + BASE64_CHARS_PER_LINE]}\n")
    out.write(f"{ARCHIVE_END}\n")
    out.flush()


def read_archive_text(lines: Iterable[str]) -> bytes:
    """Decode the last framed archive in a log and check its length and checksum."""
    header: list[str] | None = None
    chunks: list[str] = []
    done = False
    for line in lines:
        line = line.strip()
        if line.startswith(ARCHIVE_BEGIN):
            header, chunks, done = line.split()[1:], [], False
        elif line.startswith(ARCHIVE_LINE) and header is not None and not done:
            chunks.append(line[len(ARCHIVE_LINE):])
        elif line == ARCHIVE_END and header is not None:
            done = True
    if header is None or not done:
        raise ResultsError("the export job's log holds no complete results archive")
    data = base64.b64decode("".join(chunks))
    size, digest = int(header[0]), header[1]
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise ResultsError("the results archive in the export job's log is corrupt "
                           f"({len(data)} of {size} bytes, checksum mismatch)")
    return data


def unpack(data: bytes, to: Path) -> list[str]:
    """Extract an archive from :func:`pack`, refusing links and paths that leave ``to``."""
    to.mkdir(parents=True, exist_ok=True)
    root = to.resolve()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            target = (root / m.name).resolve()
            if not (m.isfile() or m.isdir()) or not target.is_relative_to(root):
                raise ResultsError(f"refusing archive member {m.name!r} (link or outside {to})")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.11.4; members were checked above
            tar.extractall(root, members=members)
    return sorted({PurePosixPath(m.name).parts[0] for m in members})
