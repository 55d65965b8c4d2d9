"""The safetensors formats: bare ``.safetensors`` files and Hugging Face checkpoint folders.

- :class:`SafetensorsFile` and :class:`HFFolder` (weights in safetensors, one file or sharded by
  an index) are averaged tensor by tensor (:mod:`.streamed`): every header read and compared
  first, then each tensor averaged over all checkpoints and written at once.
- :class:`HFBinFolder` (weights in ``pytorch_model.bin``, one file or sharded) is averaged file by
  file like the other pickled checkpoints (:mod:`.pickled`), and written as a safetensors folder.

A folder's output is written as a hidden temporary folder beside ``out`` and renamed into place
once complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

from ..io import atomic_write_bytes
from . import safetensors_io as st
from .base import Format
from .pickled import average_pickled
from .select import HF_WEIGHT_FILES
from .streamed import (
    MemorySource,
    averaged_tensors,
    collect,
    open_sources,
    st_order,
    st_summary,
    with_skips,
    write_hf_folder,
)

__all__ = ["HFBinFolder", "HFFolder", "SafetensorsFile"]


class _Streamed(Format):
    """A format of safetensors files, averaged tensor by tensor; holds only weights (no ``key``, no ``drop``)."""

    description = ""

    def check_options(self, opts):
        super().check_options(opts)
        if opts.key is not None:
            raise ValueError(f"Invalid key: {opts.key!r}; a {self.name} checkpoint holds one set of weights (key "
                             "chooses the entry of a checkpoint dict such as Lightning's or timm's)")
        if opts.drop:
            raise ValueError(f"Invalid drop: {list(opts.drop)!r}; a {self.name} checkpoint holds only weights")

    def _summary(self, sources, used, skipped, coeffs):
        summary = st_summary(sources, used, skipped, coeffs, self.name)
        return dataclasses.replace(summary, description=self.description)

    @contextlib.contextmanager
    def _opened(self, paths) -> Iterator[list]:
        """The checkpoints' sources (every header read and compared before any weight), closed afterwards."""
        sources = open_sources(paths, self.name)
        try:
            yield sources
        finally:
            for source in sources:
                source.close()

    def average(self, paths, opts):
        with self._opened(paths) as sources:
            newest = sources[-1]
            order = st_order(newest)

            def run(used, coeffs, total):
                tensors = averaged_tensors(used, order, coeffs, total, opts.nonfinite, opts.progress)
                return collect(tensors, newest.layout)

            result, used, skipped, coeffs = with_skips(sources, opts.weights, opts.alpha, opts.nonfinite, run)
            return result, self._summary(sources, used, skipped, coeffs)


class SafetensorsFile(_Streamed):
    """A bare ``.safetensors`` file; the average keeps the newest file's metadata."""

    name = "safetensors"
    order = 40
    suffixes = (".safetensors",)
    description = "safetensors files"

    def matches(self, path: Path) -> bool:
        return not path.is_dir() and path.name.endswith(".safetensors")  # a missing one is named by its reader

    def write(self, paths, out, opts):
        with self._opened(paths) as sources:
            newest = sources[-1]
            order = st_order(newest)

            def run(used, coeffs, total):
                tensors = averaged_tensors(used, order, coeffs, total, opts.nonfinite, opts.progress)
                atomic_write_bytes(out, lambda f: st.write_shard(f, order, newest.layout, newest.metadata, tensors))

            _, used, skipped, coeffs = with_skips(sources, opts.weights, opts.alpha, opts.nonfinite, run)
            return self._summary(sources, used, skipped, coeffs)


class HFFolder(_Streamed):
    """A Hugging Face checkpoint folder of safetensors weights (``model.safetensors`` or shards and their index)."""

    name = "huggingface"
    order = 20
    folder = True
    description = "Hugging Face checkpoints"

    def matches(self, path: Path) -> bool:
        return path.is_dir() and any((path / name).is_file() for name in HF_WEIGHT_FILES[:2])

    def write(self, paths, out, opts):
        with self._opened(paths) as sources:
            newest = sources[-1]
            order = st_order(newest)

            def tensors(used, coeffs, total):
                return averaged_tensors(used, order, coeffs, total, opts.nonfinite, opts.progress)

            summary = write_hf_folder(out, sources, newest, tensors, None, weights=opts.weights, alpha=opts.alpha,
                                      nonfinite=opts.nonfinite)
        return dataclasses.replace(summary, description=self.description)


class HFBinFolder(Format):
    """A Hugging Face checkpoint folder of ``pytorch_model.bin`` weights; averaged into a safetensors folder."""

    name = "huggingface-bin"
    order = 30
    folder = True

    def matches(self, path: Path) -> bool:
        return path.is_dir() and any((path / name).is_file() for name in HF_WEIGHT_FILES[2:])

    def check_options(self, opts):
        super().check_options(opts)
        if opts.key is not None:
            raise ValueError(f"Invalid key: {opts.key!r}; a Hugging Face folder holds one set of weights")

    def average(self, paths, opts):
        return average_pickled(paths, opts, hf_bin=True)

    def write(self, paths, out, opts):
        result, summary = self.average(paths, opts)
        source = MemorySource(result, paths[-1])

        def tensors(*_):
            return averaged_tensors([source], st_order(source), None, None, opts.nonfinite, None)

        return write_hf_folder(out, [source], source, tensors, summary)
