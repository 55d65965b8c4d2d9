"""The fast paths of offline averaging give the bits of a slow float64 reference (lawa_optim.offline.accumulate,
pickled_io): worker threads, pieces written in place, files read at their offsets, the fallbacks, NaN found late."""

from __future__ import annotations

import pytest
import torch

from lawa_optim.io import CheckpointError
from lawa_optim.offline import average_checkpoints, average_state_dicts, write_average
from lawa_optim.offline.accumulate import CHUNK


def reference(states, coefficients=None):
    """Stack in float64, (weighted) mean, cast back once; other entries from the newest."""
    out = {}
    for key, value in states[-1].items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            stack = torch.stack([sd[key].to(torch.float64) for sd in states])
            if coefficients is None:
                mean = stack.sum(0) / len(states)
            else:
                c = torch.tensor(coefficients, dtype=torch.float64).reshape(-1, *([1] * value.dim()))
                mean = (stack * c).sum(0)
            out[key] = mean.to(value.dtype)
        else:
            out[key] = value
    return out


def states(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        out.append({
            "big": torch.randn(3 * CHUNK + 17, generator=g) * (i + 1),  # several pieces, a short last one
            "half": torch.randn(CHUNK + 5, generator=g).half(),
            "bf": torch.randn(2, CHUNK // 2 + 3, generator=g).bfloat16(),
            "small": torch.randn(7, 5, generator=g).double(),
            "empty": torch.zeros(0, 3),
            "steps": torch.tensor(10 * i),
        })
    return out


def assert_same(got, want, ordered=True):
    assert list(got) == list(want) if ordered else sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield lambda n: torch.set_num_threads(n)
    torch.set_num_threads(before)


@pytest.mark.parametrize("n_threads", [1, 3])
def test_threads_give_the_reference_bits_in_every_format(tmp_path, threads, n_threads):
    st = pytest.importorskip("safetensors.torch")
    sds = states(5)
    for i, sd in enumerate(sds):
        torch.save({"model": sd, "epoch": i}, tmp_path / f"c{i}.pt")
        st.save_file(sd, tmp_path / f"s{i}.safetensors")
    threads(n_threads)
    pts = [tmp_path / f"c{i}.pt" for i in range(5)]
    assert_same(average_checkpoints(pts)["model"], reference(sds))
    safetensors = [tmp_path / f"s{i}.safetensors" for i in range(5)]
    assert_same(average_checkpoints(safetensors), reference(sds), ordered=False)  # save_file orders by size
    assert_same(average_state_dicts(sds), reference(sds))
    coeffs = [0.1, 0.15, 0.2, 0.25, 0.3]  # oldest first
    got = average_checkpoints(pts, weights=coeffs[::-1])["model"]
    torch.testing.assert_close(got, reference(sds, coeffs))  # a weighted sum is rounded per term: close, not equal
    assert torch.get_num_threads() == n_threads  # the averaging gives torch's threads back


def test_threads_find_and_skip_a_nan_in_the_last_piece(tmp_path, threads):
    sds = states(4)
    bad = dict(sds[1], big=sds[1]["big"].clone())
    bad["big"][-3] = float("nan")  # in the short last piece
    for i, sd in enumerate([sds[0], bad, sds[2], sds[3]]):
        torch.save(sd, tmp_path / f"c{i}.pt")
    paths = [tmp_path / f"c{i}.pt" for i in range(4)]
    for n in (1, 2):
        threads(n)
        with pytest.raises(CheckpointError, match=r"c1\.pt holds NaN or Inf in 'big'"):
            average_checkpoints(paths)
        with pytest.warns(RuntimeWarning, match=r"Skipping .*c1\.pt"):
            got = average_checkpoints(paths, nonfinite="skip")
        assert_same(got, reference([sds[0], sds[2], sds[3]]))


def test_the_oldest_bad_file_is_named_with_all_its_bad_tensors(tmp_path):
    """The sums show a NaN tensor by tensor; the message still names the oldest file holding one, with every
    tensor it holds one in (a later file's NaN in an earlier tensor is seen first)."""
    sds = states(3)
    late = dict(sds[2], small=sds[2]["small"].clone())
    late["small"][0, 0] = float("inf")
    early = dict(sds[1], big=sds[1]["big"].clone(), half=sds[1]["half"].clone())
    early["big"][0] = float("nan")
    early["half"][1] = float("-inf")
    for i, sd in enumerate([sds[0], early, late]):
        torch.save(sd, tmp_path / f"c{i}.pt")
    paths = [tmp_path / f"c{i}.pt" for i in range(3)]
    with pytest.raises(CheckpointError, match=r"c1\.pt holds NaN or Inf in 'big', 'half';"):
        average_checkpoints(paths)
    with pytest.warns(RuntimeWarning) as caught:
        got = average_checkpoints(paths, nonfinite="skip")
    assert [str(w.message).split(":")[0] for w in caught] == [f"Skipping {paths[1]}", f"Skipping {paths[2]}"]
    assert_same(got, reference([sds[0]]))


def test_files_the_meta_load_cannot_address_are_loaded_and_give_the_same_bits(tmp_path):
    """A legacy (non-zip) torch.save file and a strided view: the tensors are loaded and copied instead."""
    sds = states(3)
    legacy = tmp_path / "c0.pt"
    torch.save(sds[0], legacy, _use_new_zipfile_serialization=False)
    base = torch.randn(5, 7, dtype=torch.float64)
    strided = dict(sds[1], small=base.t())  # a transposed view: its storage is saved whole
    torch.save(strided, tmp_path / "c1.pt")
    torch.save(sds[2], tmp_path / "c2.pt")
    want = reference([sds[0], dict(sds[1], small=base.t().contiguous()), sds[2]])
    assert_same(average_checkpoints([legacy, tmp_path / "c1.pt", tmp_path / "c2.pt"], sort=False), want)


def test_tied_weights_in_files_stay_one_tensor(tmp_path):
    sds = []
    for i in range(3):
        emb = torch.randn(11, 4) + i
        sds.append({"embed.weight": emb, "head.weight": emb, "bias": torch.randn(4)})
        torch.save(sds[-1], tmp_path / f"c{i}.pt")
    out = tmp_path / "avg.pt"
    write_average([tmp_path / f"c{i}.pt" for i in range(3)], out)
    got = torch.load(out, weights_only=True)
    assert got["embed.weight"].data_ptr() == got["head.weight"].data_ptr()  # saved once, loaded tied
    assert_same(got, reference(sds))


def test_pt_output_is_written_without_crc_and_torch_keeps_its_setting(tmp_path):
    import zipfile

    sds = states(2)
    for i, sd in enumerate(sds):
        torch.save(sd, tmp_path / f"c{i}.pt")
    if hasattr(torch.serialization, "get_crc32_options"):
        assert torch.serialization.get_crc32_options()
    write_average([tmp_path / "c0.pt", tmp_path / "c1.pt"], tmp_path / "avg.pt")
    assert_same(torch.load(tmp_path / "avg.pt", weights_only=True), reference(sds))
    assert zipfile.is_zipfile(tmp_path / "avg.pt")
    if hasattr(torch.serialization, "get_crc32_options"):
        assert torch.serialization.get_crc32_options()  # restored for the user's own torch.save calls


def _written(tmp_path, sds, n_threads=1, **fields):
    for i, sd in enumerate(sds):
        torch.save({"model": sd, "epoch": i, "extra": {"ema": sd["big"] * 2, "ids": torch.arange(4)}},
                   tmp_path / f"c{i}.pt")
    out = tmp_path / "avg.pt"
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        summary = write_average([tmp_path / f"c{i}.pt" for i in range(len(sds))], out, **fields)
    finally:
        torch.set_num_threads(before)
    return torch.load(out, weights_only=True), summary


@pytest.mark.parametrize("n_threads", [1, 2])
def test_pt_written_in_pieces_gives_the_reference_bits_and_the_newest_entries(tmp_path, n_threads):
    """The .pt average is streamed into the file (structure saved with holes, pieces written at their offsets):
    the averaged weights are the reference's bits, every other tensor of the newest file (its own storage,
    not averaged) is there too, as the summary says."""
    sds = states(4)
    got, summary = _written(tmp_path, sds, n_threads)
    assert_same(got["model"], reference(sds))
    assert got["epoch"] == 3 and torch.equal(got["extra"]["ema"], sds[3]["big"] * 2)
    assert torch.equal(got["extra"]["ids"], torch.arange(4))
    assert summary.copied == ("steps",) and set(summary.averaged) == {"big", "half", "bf", "small", "empty"}


def test_pt_written_in_pieces_restarts_without_a_file_found_bad_midway(tmp_path):
    """A NaN in the last tensor of one file is found after the other tensors were written: the file is
    started over without that checkpoint, and holds exactly the average of the others."""
    sds = states(4)
    sds[2] = dict(sds[2], small=sds[2]["small"].clone())
    sds[2]["small"][-1, -1] = float("nan")  # "small" comes after "big", "half" and "bf"
    with pytest.warns(RuntimeWarning, match=r"Skipping .*c2\.pt"):
        got, summary = _written(tmp_path, sds, nonfinite="skip")
    assert_same(got["model"], reference([sds[0], sds[1], sds[3]]))
    assert summary.skipped == (str(tmp_path / "c2.pt"),)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg.pt", "c0.pt", "c1.pt", "c2.pt", "c3.pt"]  # no temp left


def test_save_streamed_takes_the_bytes_from_the_pieces_not_the_holes(tmp_path):
    """The holes are never read: filled with NaN, the file still holds the pieces' values; the other storages
    (a tensor not averaged, a tie) are written from memory."""
    from lawa_optim.io import atomic_write_bytes
    from lawa_optim.offline.pickled_io import save_streamed

    hole = torch.full((3 * CHUNK + 5,), float("nan"))
    other = torch.arange(6, dtype=torch.int64)
    obj = {"w": hole, "tied": hole, "n": other, "note": "kept"}
    want = torch.randn(hole.numel())
    pieces = (("w", want[a:a + CHUNK].clone()) for a in range(0, want.numel(), CHUNK))
    atomic_write_bytes(tmp_path / "x.pt", lambda f: save_streamed(f, obj, {"w": hole, "tied": hole}, pieces))
    got = torch.load(tmp_path / "x.pt", weights_only=True)
    assert torch.equal(got["w"], want) and got["tied"].data_ptr() == got["w"].data_ptr()
    assert torch.equal(got["n"], other) and got["note"] == "kept"
    assert torch.isnan(hole).all()  # the hole itself was never written


def test_save_streamed_falls_back_to_a_plain_save_when_the_records_are_not_as_expected(tmp_path, monkeypatch):
    """Should torch name storages otherwise than this expects, the mismatch is seen (names and sizes) and the
    plain torch.save written instead, with the same contents."""
    from lawa_optim.io import atomic_write_bytes
    from lawa_optim.offline import pickled_io

    real = pickled_io._storages
    monkeypatch.setattr(pickled_io, "_storages", lambda obj: list(reversed(real(obj))))  # names swapped
    hole, small = torch.empty(CHUNK + 3), torch.ones(2)
    want = torch.randn(hole.numel())
    pieces = iter([("w", want[:CHUNK].clone()), ("w", want[CHUNK:].clone())])
    atomic_write_bytes(tmp_path / "x.pt", lambda f: pickled_io.save_streamed(f, {"w": hole, "s": small}, {"w": hole},
                                                                             pieces))
    got = torch.load(tmp_path / "x.pt", weights_only=True)
    assert torch.equal(got["w"], want) and torch.equal(got["s"], small)


def test_writeback_asks_for_every_byte_written(monkeypatch):
    """Writeback starts the disk on whole stretches of at least `every` bytes, and flush() on the rest."""
    from lawa_optim.io import Writeback

    calls = []
    monkeypatch.setattr(Writeback, "_call", lambda fd, offset, length, flags: calls.append((offset, length, flags)))
    wb = Writeback(7, every=100)
    for offset in range(50, 50 + 13 * 30, 30):
        wb(offset, 30)
    wb.flush()
    wb.flush()  # nothing left: no call
    assert all(flags == 2 for _, _, flags in calls)
    assert [o for o, _, _ in calls] == [50, 170, 290, 410]
    assert sum(length for _, length, _ in calls) == 13 * 30 and max(length for _, length, _ in calls[:-1]) >= 100


def test_the_safetensors_writer_checks_every_tensors_parts_against_its_own_dtype(tmp_path):
    """The parts' dtype is checked per tensor: a float32 part for a bfloat16 tensor written after a float32 one
    is refused, not written (the check is cached per tensor, never carried over from the one before)."""
    from lawa_optim.offline.safetensors_io import StreamWriter

    layout = {"a": ("F32", (4,)), "b": ("BF16", (4,))}
    with open(tmp_path / "x.safetensors", "wb") as f:
        writer = StreamWriter(f, layout, None)
        assert writer.write("a", torch.ones(4))
        with pytest.raises(RuntimeError, match="internal error: a torch.float32 part of 2 elements for 'b'"):
            writer.write("b", torch.ones(2))  # the 8 bytes b lacks, in the wrong dtype
        assert writer.write("b", torch.ones(4, dtype=torch.bfloat16))
        writer.close()
