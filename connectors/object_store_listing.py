"""Which objects of a bucket or container a source reads: a prefix or a glob of keys.

Pure listing logic over any pyarrow file system: the selection spec, key globs as regular
expressions, and the sorted paths that match. Errors of the store are the caller's to
translate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
from pydantic import Field, model_validator

from dataproduct.connector import SourceSpec
from dataproduct.ingest import FileFormat

WILDCARDS = re.compile(r"[*?\[]")


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A key glob as a regex: `*` and `?` stay within one folder, `**` crosses folders."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            inner = pattern[i + 1 : end]
            out.append("[^" + inner[1:] + "]" if inner.startswith("!") else "[" + inner + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def literal_folder(pattern: str) -> str:
    """The leading folders of a key glob that hold no wildcard (where to list from)."""
    folders = pattern.split("/")[:-1]
    fixed: list[str] = []
    for folder in folders:
        if WILDCARDS.search(folder):
            break
        fixed.append(folder)
    return "/".join(fixed)


class ObjectSelectionSpec(SourceSpec):
    """Which objects of a bucket or container a source reads, and how.

    `glob` (e.g. `2026/*.parquet`) or a `prefix` of keys; `format` is csv, json, ndjson or
    parquet (else taken from the keys' extension); `hive_partitioning` adds a column for
    every `key=value/` folder of the keys.
    """

    prefix: str | None = None
    glob: str | None = Field(default=None, min_length=1)
    format: FileFormat | None = None
    hive_partitioning: bool = False

    @model_validator(mode="after")
    def _prefix_or_glob(self) -> ObjectSelectionSpec:
        if self.prefix is not None and self.glob is not None:
            raise ValueError("set either prefix or glob, not both")
        return self

    def shown_selection(self) -> dict[str, Any]:
        """What discovery may show of the selection."""
        found: dict[str, Any] = {"format": self.format}
        if self.glob is not None:
            found["glob"] = self.glob
        else:
            found["prefix"] = self.prefix or ""
        if self.hive_partitioning:
            found["hive_partitioning"] = True
        return found


@dataclass(frozen=True)
class Listing:
    """The objects a source reads: paths (`bucket/key`) under `base` (`bucket/folder`)."""

    base: str
    paths: list[str]


def list_selection(fs: pafs.FileSystem, root: str, spec: ObjectSelectionSpec) -> Listing:
    """The files of `root` matching the prefix or glob, sorted (none: empty `paths`).

    Raises what the file system raises (OSError, ArrowException).
    """
    matches: Callable[[str], object]
    if spec.glob is not None:
        folder = literal_folder(spec.glob)
        matches = glob_regex(spec.glob).match
    else:
        prefix = spec.prefix or ""
        folder = prefix.rpartition("/")[0]
        matches = prefix_matcher(prefix, folder)
    base = f"{root}/{folder}".rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    start = len(root) + 1
    paths = sorted(
        info.path
        for info in infos
        if info.type == pafs.FileType.File and matches(info.path[start:])
    )
    return Listing(base, paths)


def prefix_matcher(prefix: str, folder: str) -> Callable[[str], object]:
    """Keys under the prefix, skipping hidden ones (`_SUCCESS`, `.tmp/`, `_delta_log/`)."""
    skip = len(folder) + 1 if folder else 0

    def matches(key: str) -> bool:
        parts = key[skip:].split("/")
        return key.startswith(prefix) and not any(p.startswith(("_", ".")) for p in parts)

    return matches
