"""io: atomic artifacts that are on disk when their name says they are finished, strict JSON."""

from __future__ import annotations

import json
import math
import os

import pytest

from vae_dynamics import io


def test_an_atomic_file_is_fsynced_before_its_rename_and_the_rename_after(tmp_path, monkeypatch):
    """After a node crash an artifact must not exist empty (Snakemake would take it as finished)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd)
    )
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    io.write_json({"a": 1}, tmp_path / "summary.json")
    kinds = [(kind, os.path.basename(p)) for kind, p in events]
    assert kinds[1] == ("replace", "summary.json")
    assert kinds[0][0] == "fsync" and kinds[0][1].startswith(".summary.json.")  # the data, under its tmp name
    assert kinds[2] == ("fsync", tmp_path.name)  # then the folder that holds the new name
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": 1}


def test_an_atomic_folder_fsyncs_its_files_before_it_appears(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd)
    )
    with io.atomic_dir(tmp_path / "panels") as tmp:
        (tmp / "a.png").write_bytes(b"x")
        (tmp / "b.png").write_bytes(b"y")
    assert sorted(os.path.basename(p) for p in synced[:2]) == ["a.png", "b.png"]
    assert sorted(p.name for p in (tmp_path / "panels").iterdir()) == ["a.png", "b.png"]


def test_json_is_strict_nan_and_infinity_become_null_and_the_file_says_which(tmp_path):
    path = tmp_path / "metrics.json"
    io.write_json({"ssim": math.nan, "psnr": 31.5, "per_subject": [1.0, math.inf], "n": 2}, path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert data["ssim"] is None and data["per_subject"] == [1.0, None] and data["psnr"] == 31.5
    assert data[io.NON_FINITE_KEY] == ["ssim", "per_subject[1]"]
    io.write_json({"ok": 1.0}, path)
    assert io.NON_FINITE_KEY not in json.loads(path.read_text())  # only when something was replaced


def test_the_loser_of_two_concurrent_folder_writers_leaves_nothing_behind(tmp_path, monkeypatch):
    """Another writer lands its folder between our two renames: os.replace fails with ENOTEMPTY. The
    winner's folder stands, and neither our temporary folder nor the one moved aside is left over."""
    target = tmp_path / "panels"
    target.mkdir()
    (target / "old.png").write_bytes(b"0")
    real_replace = os.replace
    calls = []

    def racing_replace(src, dst):
        calls.append(dst)
        real_replace(src, dst)
        if len(calls) == 1:  # we just moved the old folder aside: the other writer lands now
            target.mkdir()
            (target / "winner.png").write_bytes(b"w")

    monkeypatch.setattr(os, "replace", racing_replace)
    with io.atomic_dir(target) as tmp:
        (tmp / "ours.png").write_bytes(b"o")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["panels"]
    assert sorted(p.name for p in target.iterdir()) == ["winner.png"]


def test_leftovers_of_killed_writers_are_found_by_name_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    leftovers = [
        run / "checkpoints" / ".last.ckpt.0123456789ab.partial",
        run / ".metrics.csv.abcdef012345.tmp",
        run / ".recon.00112233aabb.old",
    ]
    leftovers[0].write_bytes(b"x" * 100)
    leftovers[1].write_text("half")
    (leftovers[2] / "epoch_0").mkdir(parents=True)
    kept = [run / "checkpoints" / "last.ckpt", run / ".hidden_notes", run / ".last.ckpt.short.partial"]
    for path in kept:
        path.write_text("keep")
    # a link in the run directory to a user's folder is not followed: nothing outside the run is removed
    outside = tmp_path / "users_data"
    outside.mkdir()
    theirs = outside / ".notes.0123456789ab.tmp"
    theirs.write_text("keep")
    (run / "data_link").symlink_to(outside, target_is_directory=True)
    assert sorted(io.remove_leftovers(run)) == sorted(leftovers)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in leftovers)
    assert theirs.read_text() == "keep"


# ---- output folders the user names (encode --out, evaluate --out, the panels) -------------------------


def _write(path, command="encode", **kwargs):
    with io.output_dir(path, command, **kwargs) as tmp:
        (tmp / "latents.csv").write_text("subject_id\nA\n")


def test_an_output_folder_holding_a_users_file_is_refused_naming_it_and_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(io.OutputError, match=r"notes\.txt.*--force"):
        _write(out)
    assert (out / "notes.txt").read_text() == "mine" and not (out / "latents.csv").exists()
    _write(out, force=True)  # the user says so
    assert sorted(p.name for p in out.iterdir()) == [io.OUTPUT_MARKER, "latents.csv"]


def test_an_empty_folder_or_the_commands_own_output_is_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _write(out)
    marker = json.loads((out / io.OUTPUT_MARKER).read_text())
    assert marker == {"command": "encode", "entries": ["latents.csv"]}
    _write(out)  # a rerun of the same command
    with pytest.raises(io.OutputError, match="latents.csv"):  # another command's output is not its own
        _write(out, "evaluate")
    (out / "extra.nii.gz").write_text("x")  # the user added a file to an earlier output
    with pytest.raises(io.OutputError, match=r"extra\.nii\.gz"):
        _write(out)


@pytest.mark.parametrize("where", ["equal", "inside", "contains"])
def test_an_output_folder_that_is_contains_or_lies_in_an_input_is_refused_even_with_force(tmp_path, where):
    scans = tmp_path / "scans"
    (scans / "s1").mkdir(parents=True)
    (scans / "s1" / "t1c.nii.gz").write_text("scan")
    out = {"equal": scans, "inside": scans / "codes", "contains": tmp_path}[where]
    relation = {"equal": "is", "inside": "lies inside", "contains": "contains"}[where]
    with pytest.raises(io.OutputError, match=f"{relation} the input"):
        _write(out, protected={"the input": [scans]}, force=True)
    assert (scans / "s1" / "t1c.nii.gz").read_text() == "scan"


def test_a_second_writer_of_an_output_folder_fails_at_once(tmp_path):
    out = tmp_path / "out"
    with io.output_dir(out, "encode"), pytest.raises(io.BusyError, match="being written by another command"):
        _write(out)


def test_a_killed_writers_hidden_folder_beside_the_output_is_removed(tmp_path):
    leftover = tmp_path / ".out.0123456789ab.tmp"
    leftover.mkdir()
    (leftover / "latents.csv").write_text("half")
    unrelated = tmp_path / ".other.0123456789ab.tmp"
    unrelated.mkdir()
    _write(tmp_path / "out")
    assert not leftover.exists() and unrelated.exists()


def test_a_file_system_without_flock_gets_a_clear_message(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    message = r"does not support flock.*Lustre mounted with -o flock"
    with (
        pytest.raises(io.LockUnsupportedError, match=message),
        io.exclusive_lock(tmp_path / "x.lock", "busy"),
    ):
        pass
