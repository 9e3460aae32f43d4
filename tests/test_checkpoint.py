"""Checkpoint / resume: exact round trips, RNG streams, corrupt files, parameter checks, atomic saves."""

import pytest
import torch

import cryoscope.io.checkpoint as ckpt
from cryoscope.errors import CryoscopeError, InputFormatError, InvalidValueError, MissingDataError
from cryoscope.io.checkpoint import (
    CheckpointDir,
    generator_state,
    load_checkpoint,
    restore_generator,
    save_checkpoint,
)

PARAMS = {"box": 32, "pixel_size": 1.5, "symmetry": "C1", "n_classes": 3, "shells": [0.1, 0.2]}


def sample_state():
    g = torch.Generator().manual_seed(5)
    big = torch.randn(100, 10, generator=g)
    return {
        "f32": torch.randn(4, 5, generator=g),
        "f64": torch.randn(3, dtype=torch.float64, generator=g),
        "c64": torch.randn(2, 3, dtype=torch.complex64, generator=g),
        "c128": torch.randn(6, dtype=torch.complex128, generator=g),
        "long": torch.randint(-(2**40), 2**40, (7,), generator=g),
        "view": big[10:12, ::3],  # a strided view of a larger tensor
        "nested": {"a": {"b": [1, 2.5, "x", None, True]}, "t": (torch.arange(3), 4)},
        "iteration": 7,
        "name": "refine",
    }


def assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip_is_exact(tmp_path):
    state = sample_state()
    path = tmp_path / "run" / "c.pt"
    save_checkpoint(path, state, PARAMS)
    loaded = load_checkpoint(path, dict(PARAMS))
    assert_same(state, loaded)
    # the view is stored on its own, not with the 100 x 10 tensor it was cut from
    assert loaded["view"].untyped_storage().nbytes() == loaded["view"].nbytes
    # tuples in parameters compare equal to the lists they were saved as
    load_checkpoint(path, {**PARAMS, "shells": (0.1, 0.2)})


def test_generator_resumes_the_same_stream(tmp_path):
    g = torch.Generator().manual_seed(123)
    torch.rand(10, generator=g)
    save_checkpoint(tmp_path / "c.pt", {"rng": generator_state(g)}, PARAMS)
    expected = torch.randn(50, generator=g)
    resumed = restore_generator(torch.Generator().manual_seed(999), load_checkpoint(tmp_path / "c.pt")["rng"])
    assert torch.equal(torch.randn(50, generator=resumed), expected)


def test_truncated_missing_and_foreign_files_are_named(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, sample_state(), PARAMS)
    data = path.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFormatError, match="truncated.pt"):
        load_checkpoint(bad)
    with pytest.raises(MissingDataError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(InputFormatError, match="foreign.pt.*not a cryoscope checkpoint"):
        load_checkpoint(foreign)
    for exc in (InputFormatError, MissingDataError):
        assert issubclass(exc, CryoscopeError)


def test_other_format_version_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "old.pt"
    monkeypatch.setattr(ckpt, "FORMAT_VERSION", 99)
    save_checkpoint(path, {"x": 1}, PARAMS)
    monkeypatch.undo()
    with pytest.raises(InputFormatError, match="old.pt.*version 99"):
        load_checkpoint(path)


def test_params_mismatch_names_the_keys(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"x": 1}, PARAMS)
    changed = {**PARAMS, "box": 64, "extra": 1}
    del changed["symmetry"]
    with pytest.raises(InvalidValueError) as err:
        load_checkpoint(path, changed)
    msg = str(err.value)
    assert "c.pt" in msg and "\n" not in msg
    assert "box (checkpoint 32, now 64)" in msg and "symmetry" in msg and "extra" in msg
    assert "pixel_size" not in msg and "n_classes" not in msg
    # a bool is not the integer 1
    save_checkpoint(path, {"x": 1}, {"flag": 1})
    with pytest.raises(InvalidValueError, match="flag"):
        load_checkpoint(path, {"flag": True})


def test_failed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"x": torch.ones(3)}, PARAMS)
    # an unsupported object type is refused before anything is written
    with pytest.raises(InvalidValueError, match="object"):
        save_checkpoint(path, {"x": torch.zeros(3), "bad": {"inner": object()}}, PARAMS)
    with pytest.raises(InvalidValueError, match="JSON"):
        save_checkpoint(path, {"x": 1}, {"device": torch.device("cpu")})

    # a write that dies half-way leaves no partial file and the old checkpoint intact
    def dying_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"x": torch.zeros(3)}, PARAMS)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert torch.equal(load_checkpoint(path, PARAMS)["x"], torch.ones(3))


def test_checkpoint_dir_keeps_latest(tmp_path):
    out = tmp_path / "out"
    cd = CheckpointDir(out, PARAMS)
    assert not cd.exists()
    for it in range(3):
        cd.save(it, {"map": torch.full((2, 2), float(it))})
    assert cd.exists() and [p.name for p in out.iterdir()] == ["checkpoint.pt"]
    iteration, state = CheckpointDir(out, dict(PARAMS)).load()
    assert iteration == 2 and torch.equal(state["map"], torch.full((2, 2), 2.0))
    with pytest.raises(InvalidValueError, match="n_classes"):
        CheckpointDir(out, {**PARAMS, "n_classes": 4}).load()
