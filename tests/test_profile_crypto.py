"""Profiles are biometric data: encryption at rest (AES-256-GCM, bound to the profile's name), erasure that
overwrites before unlinking, passphrase-encrypted export bundles, and the `expose profiles` commands."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from expose.monitor.config import STARTER_MODEL
from expose.monitor.errors import ConfigError, ExposeError
from expose.monitor.model.verification import IdentityReferences
from expose.profiles.crypto import (
    BundleError,
    ProfileKey,
    ProfileKeyError,
    configured_key,
    open_bundle,
    parse_key,
    seal_bundle,
    write_key_file,
)
from expose.profiles.store import (
    Calibration,
    Profile,
    ProfileError,
    ProfileLocked,
    ProfileStore,
    Reference,
    UnknownProfile,
    encode_profile,
)

if TYPE_CHECKING:
    from tests.conftest import Clip, Extract, RunCli

SECRET_PATH = "/recordings/alice/board-meeting-2026.mp4"


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("EXPOSE_PROFILES_KEY", "EXPOSE_PROFILES_KEY_FILE", "EXPOSE_EXPORT_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)


def make_profile(name: str = "alice", seed: int = 0) -> Profile:
    rng = np.random.default_rng(seed)
    refs = IdentityReferences(rng.normal(size=(5, 128)).astype(np.float32),
                              rng.normal(size=(3, 256)).astype(np.float32))
    cal = Calibration(n_windows=12, mean=0.25, std=0.5, threshold=1.4, target_far=0.01,
                      quantiles={"0.5": 0.2, "0.99": 1.3}, center=0.1, scale=0.7, identity_mean=0.05,
                      fit_mean=0.02, smoothing_sd_ratio=[1.0, 0.8, 0.7])
    return Profile(name, "a" * 64, "2026-12-01T00:00:00+00:00", [Reference(SECRET_PATH, "b" * 64, 61.5, 57)], cal,
                   {"steps": 300, "calibration_source": "held-out"},
                   torch.from_numpy(rng.normal(size=(16, 128)).astype(np.float32)), refs, "d" * 64)


def assert_same(a: Profile, b: Profile) -> None:
    assert torch.equal(a.tokens, b.tokens) and a.tokens.dtype == b.tokens.dtype
    np.testing.assert_array_equal(a.identity.face, b.identity.face)
    np.testing.assert_array_equal(a.identity.voice, b.identity.voice)
    def meta(p: Profile) -> object:  # JSON's view: the store keeps tuples as lists, as it always has
        return json.loads(json.dumps({k: v for k, v in dataclasses.asdict(p).items() if k not in ("tokens",
                                                                                                 "identity")}))
    assert meta(a) == meta(b)


def float_runs(p: Profile) -> list[bytes]:
    """Byte runs of the embeddings as float32 (16 bytes from each row): none may appear in a sealed file."""
    rows = [*p.tokens.numpy(), *p.identity.face, *p.identity.voice]
    return [np.ascontiguousarray(r[:4], dtype=np.float32).tobytes() for r in rows]


@pytest.fixture
def key() -> ProfileKey:
    return ProfileKey(os.urandom(32), "test key")


def test_sealed_files_hold_nothing_readable(tmp_path: Path, key: ProfileKey) -> None:
    p = make_profile()
    d = ProfileStore(tmp_path, key=key).save(p)
    assert sorted(f.name for f in d.iterdir()) == ["profile.json.enc", "tokens.safetensors.enc"]
    blobs = [f.read_bytes() for f in d.iterdir()]
    clear_meta, clear_tokens = encode_profile(p)
    assert any(run in clear_tokens for run in float_runs(p))  # the probe finds them in clear text
    for blob in blobs:
        assert not any(run in blob for run in float_runs(p))
        assert SECRET_PATH.encode() not in blob and b"alice" not in blob and b"calibration" not in blob
        with pytest.raises(ValueError):
            json.loads(blob)
    # without the key: listed, recognised as encrypted, not readable
    store = ProfileStore(tmp_path)
    assert store.names() == ["alice"] and store.exists("alice") and store.is_encrypted("alice")
    assert store.key_id_of("alice") == key.key_id
    with pytest.raises(ProfileLocked, match=f"profile 'alice' is encrypted with key id {key.key_id} and no key "
                       "is configured"):
        store.load("alice")


def test_wrong_key_is_named_and_right_key_round_trips(tmp_path: Path, key: ProfileKey) -> None:
    p = make_profile()
    ProfileStore(tmp_path, key=key).save(p)
    other = ProfileKey(os.urandom(32), "env EXPOSE_PROFILES_KEY")
    with pytest.raises(ProfileLocked) as err:
        ProfileStore(tmp_path, key=other).load("alice")
    assert str(err.value) == (f"profile 'alice' was encrypted with key id {key.key_id}, the configured key is "
                              f"{other.key_id} (env EXPOSE_PROFILES_KEY)")
    assert isinstance(err.value, ProfileError) and "\n" not in str(err.value)
    assert_same(ProfileStore(tmp_path, key=key.key).load("alice"), p)  # raw bytes work too


def test_sealed_files_are_bound_to_their_profile_and_role(tmp_path: Path, key: ProfileKey) -> None:
    store = ProfileStore(tmp_path, key=key)
    store.save(make_profile("alice", 0))
    store.save(make_profile("bob", 1))
    (tmp_path / "alice").rename(tmp_path / "carol")  # a renamed folder
    with pytest.raises(ProfileLocked, match="'carol'.*failed authentication.*bound to its name"):
        store.load("carol")
    # bob's embeddings put in dave's folder: dave's metadata opens, the tokens do not
    store.save(make_profile("dave", 2))
    (tmp_path / "bob" / "tokens.safetensors.enc").replace(tmp_path / "dave" / "tokens.safetensors.enc")
    with pytest.raises(ProfileLocked, match="'dave'.*tokens.safetensors.enc failed authentication"):
        store.load("dave")
    # one file of a profile in the place of the other
    store.save(make_profile("erin", 3))
    e = tmp_path / "erin"
    (e / "profile.json.enc").write_bytes((e / "tokens.safetensors.enc").read_bytes())
    with pytest.raises(ProfileLocked, match="profile.json.enc failed authentication"):
        store.load("erin")
    # a flipped bit
    store.save(make_profile("fred", 4))
    f = tmp_path / "fred" / "profile.json.enc"
    blob = bytearray(f.read_bytes())
    blob[-20] ^= 1
    f.write_bytes(bytes(blob))
    with pytest.raises(ProfileLocked, match="damaged"):
        store.load("fred")


def test_clear_profiles_still_load_and_are_encrypted_in_place(tmp_path: Path, key: ProfileKey) -> None:
    p = make_profile()
    ProfileStore(tmp_path).save(p)  # no key: today's clear text
    d = tmp_path / "alice"
    assert json.loads((d / "profile.json").read_text())["references"][0]["path"] == SECRET_PATH
    old_tokens = tmp_path / "old-tokens"
    os.link(d / "tokens.safetensors", old_tokens)  # a second name for the clear file: shows it is overwritten
    store = ProfileStore(tmp_path, key=key)
    assert_same(store.load("alice"), p)  # a key does not lock out clear profiles
    assert "1 profile(s) stored unencrypted" in (store.unencrypted_warning() or "")
    assert store.encrypt("alice") and not store.encrypt("alice")
    assert sorted(f.name for f in d.iterdir()) == ["profile.json.enc", "tokens.safetensors.enc"]
    assert set(old_tokens.read_bytes()) == {0}  # the clear bytes were zeroed, not just unlinked
    assert_same(store.load("alice"), p)
    assert store.unencrypted_warning() is None
    with pytest.raises(ProfileLocked, match="no profiles key configured"):
        ProfileStore(tmp_path).encrypt("alice")


def test_delete_overwrites_and_leaves_nothing(tmp_path: Path, key: ProfileKey) -> None:
    root = tmp_path / "profiles"
    store = ProfileStore(root, key=key)
    store.save(make_profile())
    d = root / "alice"
    linked = {f.name: tmp_path / f"link-{f.name}" for f in d.iterdir()}
    for name, link in linked.items():
        os.link(d / name, link)
    tmp = root / "alice.tmp"  # left by a save that was interrupted
    tmp.mkdir()
    (tmp / "tokens.safetensors").write_bytes(encode_profile(make_profile())[1])
    store.delete("alice")
    assert list(root.iterdir()) == [] and not store.exists("alice") and store.names() == []
    for link in linked.values():
        data = link.read_bytes()
        assert data and set(data) == {0}, link
    with pytest.raises(UnknownProfile):
        store.delete("alice")
    # replacing a profile erases the one it replaces
    store.save(make_profile())
    os.link(d / "profile.json.enc", tmp_path / "before")
    store.save(make_profile(seed=5))
    assert set((tmp_path / "before").read_bytes()) == {0}
    assert_same(store.load("alice"), make_profile(seed=5))


def test_keys_and_key_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = os.urandom(32)
    assert parse_key(raw.hex(), "x").key == raw
    assert parse_key(base64.b64encode(raw).decode() + "\n", "x").key == raw
    assert parse_key(base64.urlsafe_b64encode(raw).decode(), "x").key == raw
    for bad in ("", "abc", base64.b64encode(raw[:16]).decode(), "zz" * 32):
        with pytest.raises(ProfileKeyError, match="not base64 or hex of 32 bytes"):
            parse_key(bad, "x")
    root = tmp_path / "profiles"
    root.mkdir()
    # keygen: a new file of mode 0600, never overwritten, never inside the profiles folder
    kf = tmp_path / "keys" / "profiles.key"
    kf.parent.mkdir()
    key = write_key_file(kf, root)
    assert stat.S_IMODE(kf.stat().st_mode) == 0o600
    with pytest.raises(ProfileKeyError, match="refusing to overwrite"):
        write_key_file(kf, root)
    with pytest.raises(ProfileKeyError, match="inside the profiles folder"):
        write_key_file(root / "profiles.key", root)
    assert not (root / "profiles.key").exists()
    # the configured key: env key, else the key file; a key file in the profiles folder is refused
    assert configured_key(None, root) is None
    loaded = configured_key(kf, root)
    assert loaded is not None and loaded.key == key.key and loaded.key_id == key.key_id
    inside = root / "sub" / "k"
    inside.parent.mkdir()
    inside.write_text(kf.read_text())
    with pytest.raises(ProfileKeyError, match="inside the profiles folder") as err:
        configured_key(inside, root)
    assert isinstance(err.value, ConfigError) and isinstance(err.value, ExposeError)
    (tmp_path / "alias").symlink_to(root)
    with pytest.raises(ProfileKeyError, match="inside the profiles folder"):  # also through a link
        configured_key(tmp_path / "alias" / "sub" / "k", root)
    with pytest.raises(ProfileKeyError, match="not found"):
        configured_key(tmp_path / "missing.key", root)
    monkeypatch.setenv("EXPOSE_PROFILES_KEY", raw.hex())
    env_key = configured_key(kf, root)
    assert env_key is not None and env_key.key == raw and env_key.source == "env EXPOSE_PROFILES_KEY"


def test_bundle_round_trip_and_wrong_passphrase(tmp_path: Path) -> None:
    p = make_profile()
    meta, tokens = encode_profile(p)
    blob = seal_bundle(meta, tokens, "correct horse battery")
    assert not any(run in blob for run in float_runs(p)) and SECRET_PATH.encode() not in blob
    assert open_bundle(blob, "correct horse battery", "b") == (meta, tokens)
    with pytest.raises(BundleError, match="^cannot decrypt b: wrong passphrase"):
        open_bundle(blob, "wrong horse battery", "b")
    tampered = bytearray(blob)
    tampered[12] ^= 1  # the salt is authenticated too
    with pytest.raises(BundleError, match="wrong passphrase"):
        open_bundle(bytes(tampered), "correct horse battery", "b")
    with pytest.raises(BundleError, match="not an expose profile bundle"):
        open_bundle(meta, "correct horse battery", "b")
    with pytest.raises(BundleError, match="at least 8 characters"):
        seal_bundle(meta, tokens, "short")


def test_real_enrolled_profile_round_trips_encrypted(tmp_path: Path, key: ProfileKey, extract: Extract,
                                                    clip: Clip) -> None:
    from expose.monitor.model.exam import load_model
    from expose.profiles.enroll import EnrollConfig, enroll

    path = clip("real/trump/speech_01.mp4")
    track = extract(path)
    prof = enroll("trump", load_model(STARTER_MODEL), [(track, Reference(str(path), track.media_sha256,
                                                                          round(track.duration, 3), 0))],
                  EnrollConfig(steps=5, batch=8))
    assert len(prof.identity.face) and len(prof.identity.voice)
    store = ProfileStore(tmp_path, key=key)
    d = store.save(prof)
    for f in d.iterdir():
        blob = f.read_bytes()
        assert not any(run in blob for run in float_runs(prof)) and str(path).encode() not in blob
    assert_same(store.load("trump"), prof)


# ---- the commands --------------------------------------------------------------------------------
def expose(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str | Path,
           env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``expose ARGS`` in this process as the console script does: (exit status, stdout, stderr)."""
    from expose.monitor.cli.main import main

    with monkeypatch.context() as mp:
        for k, v in (env or {}).items():
            mp.setenv(k, v)
        mp.setattr(sys, "argv", ["expose", *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            main()
    code = done.value.code
    captured = capsys.readouterr()
    return (code if isinstance(code, int) else 0 if code is None else 1), captured.out, captured.err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("expose: error: "), err
    return lines[0]


def test_cli_keygen_encrypt_list_show(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root, kf = tmp_path / "profiles", tmp_path / "secrets" / "profiles.key"
    kf.parent.mkdir()
    ProfileStore(root).save(make_profile("alice", 0))  # clear text, as before this change
    ProfileStore(root).save(make_profile("bob", 1))
    code, out, _ = expose(capsys, monkeypatch, "profiles", "keygen", "--out", kf, "--profiles", root)
    assert code == 0 and "key id" in out and stat.S_IMODE(kf.stat().st_mode) == 0o600
    code, _, err = expose(capsys, monkeypatch, "profiles", "keygen", "--out", root / "k", "--profiles", root)
    assert code == 2 and "inside the profiles folder" in one_line_error(err)
    code, _, err = expose(capsys, monkeypatch, "profiles", "encrypt", "--profiles", root)
    assert code == 2 and "no profiles key configured" in one_line_error(err)
    with_key = {"EXPOSE_PROFILES_KEY_FILE": str(kf)}
    code, out, _ = expose(capsys, monkeypatch, "profiles", "encrypt", "--profiles", root, env=with_key)
    assert code == 0 and "encrypted 2 profile(s)" in out and "alice, bob" in out
    assert not list(root.glob("*/*.json")) and not list(root.glob("*/*.safetensors"))
    # without the key: both listed, each said to be unreadable and why
    code, out, _ = expose(capsys, monkeypatch, "profiles", "list", "--profiles", root)
    assert code == 0 and out.count("UNUSABLE") == 2 and "no key is configured" in out
    code, out, _ = expose(capsys, monkeypatch, "profiles", "list", "--json", "--profiles", root)
    assert [(r["name"], r["encrypted"], "error" in r) for r in json.loads(out)] == [("alice", True, True),
                                                                                    ("bob", True, True)]
    code, _, err = expose(capsys, monkeypatch, "profiles", "show", "alice", "--profiles", root)
    assert code == 2 and "encrypted with key id" in one_line_error(err)
    other = tmp_path / "secrets" / "other.key"
    write_key_file(other, root)
    code, _, err = expose(capsys, monkeypatch, "profiles", "show", "alice", "--profiles", root,
                          env={"EXPOSE_PROFILES_KEY_FILE": str(other)})
    assert code == 2 and "the configured key is" in one_line_error(err)
    # with it: readable
    code, out, _ = expose(capsys, monkeypatch, "profiles", "list", "--profiles", root, env=with_key)
    assert code == 0 and "UNUSABLE" not in out and out.count("encrypted (key id") == 2
    code, out, _ = expose(capsys, monkeypatch, "profiles", "show", "alice", "--profiles", root, env=with_key)
    assert code == 0 and json.loads(out)["references"][0]["path"] == SECRET_PATH
    # a key file inside the profiles folder is refused by every command that reads profiles
    (root / "key").write_text(kf.read_text())
    code, _, err = expose(capsys, monkeypatch, "profiles", "list", "--profiles", root,
                          env={"EXPOSE_PROFILES_KEY_FILE": str(root / "key")})
    assert code == 2 and "inside the profiles folder" in one_line_error(err)
    # delete needs no key and erases
    code, out, _ = expose(capsys, monkeypatch, "profiles", "delete", "alice", "--profiles", root)
    assert code == 0 and "erased profile 'alice'" in out and not (root / "alice").exists()


def test_cli_export_import(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch, key: ProfileKey) -> None:
    src, dst = tmp_path / "here", tmp_path / "there"
    p = make_profile()
    ProfileStore(src, key=key).save(p)
    src_env = {"EXPOSE_PROFILES_KEY": base64.b64encode(key.key).decode()}
    pw = tmp_path / "passphrase"
    pw.write_text("a long export passphrase\n")
    bundle = tmp_path / "alice.expose-profile"
    code, out, _ = expose(capsys, monkeypatch, "profiles", "export", "alice", "--out", bundle,
                          "--passphrase-file", pw, "--profiles", src, env=src_env)
    assert code == 0 and "exported profile 'alice'" in out
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert not any(run in bundle.read_bytes() for run in float_runs(p))
    code, _, err = expose(capsys, monkeypatch, "profiles", "export", "alice", "--out", bundle,
                          "--passphrase-file", pw, "--profiles", src, env=src_env)
    assert code == 2 and "exists" in one_line_error(err)
    # the wrong passphrase: one line, exit 2, nothing imported
    code, _, err = expose(capsys, monkeypatch, "profiles", "import", bundle, "--profiles", dst,
                          env={"EXPOSE_EXPORT_PASSPHRASE": "not the passphrase"})
    assert code == 2 and "wrong passphrase" in one_line_error(err) and ProfileStore(dst).names() == []
    # no passphrase at all and no terminal
    code, _, err = expose(capsys, monkeypatch, "profiles", "import", bundle, "--profiles", dst)
    assert code == 2 and "no passphrase" in one_line_error(err)
    # into a store without a key (clear text, with the warning), and under a new name into one with another key
    code, out, err = expose(capsys, monkeypatch, "profiles", "import", bundle, "--passphrase-file", pw,
                            "--profiles", dst)
    assert code == 0 and "clear text" in out and "stored unencrypted" in err
    assert_same(ProfileStore(dst).load("alice"), p)
    code, _, err = expose(capsys, monkeypatch, "profiles", "import", bundle, "--passphrase-file", pw,
                          "--profiles", dst)
    assert code == 2 and "already exists" in one_line_error(err)
    other = ProfileKey(os.urandom(32))
    code, out, _ = expose(capsys, monkeypatch, "profiles", "import", bundle, "--name", "alice2", "--profiles", dst,
                          env={"EXPOSE_EXPORT_PASSPHRASE": "a long export passphrase",
                               "EXPOSE_PROFILES_KEY": other.key.hex()})
    assert code == 0 and f"encrypted, key id {other.key_id}" in out
    assert_same(ProfileStore(dst, key=other).load("alice2"), dataclasses.replace(p, name="alice2"))


def test_console_script_wrong_passphrase_exit_status(tmp_path: Path, run_cli: RunCli) -> None:
    """As a user runs it: a subprocess, exit status 2 and one line on stderr."""
    meta, tokens = encode_profile(make_profile())
    bundle = tmp_path / "alice.expose-profile"
    bundle.write_bytes(seal_bundle(meta, tokens, "the right passphrase"))
    proc = run_cli("profiles", "import", bundle, "--profiles", tmp_path / "p",
                   env={"EXPOSE_EXPORT_PASSPHRASE": "a wrong passphrase", "EXPOSE_PROFILES_KEY": ""})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"expose: error: cannot decrypt {bundle}: wrong passphrase (or the file is damaged)"
