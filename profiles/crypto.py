"""Profiles are biometric data: their encryption at rest, in-place erasure, and export bundles.

**At rest** (``ProfileStore(root, key=...)``): each file of a profile is sealed with AES-256-GCM
under the profiles key. A sealed file is::

    b"EXPOSE-P" | version (1 byte) | key id (8 bytes) | nonce (12 bytes) | ciphertext + tag (16 bytes)

The key id is the first 8 bytes of SHA-256 of the key, so a wrong key is named as such instead of
failing as "damaged". The associated data is the header followed by ``<profile name>/<file role>``
(e.g. ``alice/tokens.safetensors``): a sealed file moved to another profile's folder, or swapped
with the other file of its profile, fails authentication.

**The key**: env ``EXPOSE_PROFILES_KEY`` (base64 or hex of 32 bytes), else a key file
(``profiles_key_file`` in the config, env ``EXPOSE_PROFILES_KEY_FILE``), written by
``expose profiles keygen``. A key file inside the profiles folder is refused: a key stored beside
what it protects protects nothing. Deleting the key makes every profile sealed with it unreadable
(crypto-shredding): that, not the overwriting ``delete`` does, is what erases data on SSDs,
copy-on-write file systems and snapshots.

**Export bundles** (``expose profiles export``): one profile, sealed with AES-256-GCM under a key
derived from a passphrase with scrypt (random 16-byte salt)::

    b"EXPOSE-B" | version | log2(n) | r | p (1 byte each) | salt (16) | nonce (12) | ciphertext + tag

with the header as associated data. The plaintext is ``len(meta) (4 bytes, big-endian) | meta JSON |
tokens safetensors``, the two files of a profile as the store writes them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from expose.monitor.errors import ConfigError, ExposeError

log = logging.getLogger(__name__)

KEY_ENV = "EXPOSE_PROFILES_KEY"
KEY_FILE_ENV = "EXPOSE_PROFILES_KEY_FILE"
PASSPHRASE_ENV = "EXPOSE_EXPORT_PASSPHRASE"
KEY_BYTES = 32
SEALED_MAGIC = b"EXPOSE-P"
SEALED_VERSION = 1
_SEALED_HEADER = struct.Struct(">8sB8s12s")  # magic, version, key id, nonce
BUNDLE_MAGIC = b"EXPOSE-B"
BUNDLE_VERSION = 1
BUNDLE_SUFFIX = ".expose-profile"
_BUNDLE_HEADER = struct.Struct(">8sBBBB16s12s")  # magic, version, log2 n, r, p, salt, nonce
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 15, 8, 1  # 32 MiB, ~0.1 s: the cost of one passphrase guess
MIN_PASSPHRASE = 8


class ProfileKeyError(ConfigError):
    """The profiles key is malformed, unreadable, or kept inside the profiles folder."""


class SealError(ExposeError):
    """A sealed profile file cannot be opened (the store words it with the profile's name)."""


class NoKey(SealError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"encrypted with key id {key_id} and no key is configured")
        self.key_id = key_id


class WrongKey(SealError):
    def __init__(self, key_id: str, configured: str) -> None:
        super().__init__(f"encrypted with key id {key_id}, the configured key is {configured}")
        self.key_id, self.configured = key_id, configured


class BadSeal(SealError):
    """Not a sealed file of this version, or authentication failed (damaged, or moved)."""


class BundleError(ExposeError):
    """An export bundle is unreadable, or the passphrase is wrong."""


@dataclass(frozen=True)
class ProfileKey:
    """32 bytes of AES-256 key and where they came from (for messages; the key is never shown)."""

    key: bytes = field(repr=False)
    source: str = "the given key"

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise ProfileKeyError(f"profiles key from {self.source} has {len(self.key)} bytes, not {KEY_BYTES}")

    @property
    def key_id(self) -> str:
        return key_id(self.key)


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).digest()[:8].hex()


def parse_key(text: str, source: str) -> ProfileKey:
    """A key written as 64 hex digits or as base64 (standard or URL-safe) of 32 bytes."""
    s = "".join(text.split())
    raw: bytes | None = None
    if len(s) == 2 * KEY_BYTES:
        try:
            raw = bytes.fromhex(s)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.b64decode(s.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != KEY_BYTES:
        raise ProfileKeyError(f"profiles key from {source} is not base64 or hex of {KEY_BYTES} bytes "
                              "(make one: expose profiles keygen --out FILE)")
    return ProfileKey(raw, source)


def _inside(path: Path, root: Path) -> bool:
    return path.expanduser().resolve().is_relative_to(root.expanduser().resolve())


def check_key_location(path: Path, profiles_root: Path) -> None:
    if _inside(path, profiles_root):
        raise ProfileKeyError(f"profiles key file {path} is inside the profiles folder {profiles_root}: keep the "
                              "key elsewhere (a key beside the profiles protects nothing)")


def load_key_file(path: Path, profiles_root: Path) -> ProfileKey:
    path = Path(path).expanduser()
    check_key_location(path, profiles_root)
    try:
        text = path.read_text(encoding="ascii")
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ProfileKeyError(f"profiles key file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileKeyError(f"cannot read profiles key file {path}: {err}") from None
    if mode & 0o077:
        log.warning("profiles key file %s is readable by other users (mode %o): chmod 600 it", path, mode & 0o777)
    return parse_key(text, str(path))


def configured_key(key_file: Path | None, profiles_root: Path) -> ProfileKey | None:
    """The profiles key: env EXPOSE_PROFILES_KEY, else ``key_file`` (config ``profiles_key_file`` or env
    EXPOSE_PROFILES_KEY_FILE, which load_config applies); None: profiles are stored in clear."""
    if env := os.environ.get(KEY_ENV):
        return parse_key(env, f"env {KEY_ENV}")
    if key_file is not None:
        return load_key_file(key_file, profiles_root)
    return None


def write_key_file(path: Path, profiles_root: Path) -> ProfileKey:
    """A new random key in a new file of mode 0600 (an existing file is never overwritten: it may be
    the only key to some profiles)."""
    path = Path(path).expanduser()
    check_key_location(path, profiles_root)
    key = ProfileKey(secrets.token_bytes(KEY_BYTES), str(path))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ProfileKeyError(f"{path} exists; refusing to overwrite a key file (profiles sealed with it would "
                              "become unreadable)") from None
    except OSError as err:
        raise ProfileKeyError(f"cannot create key file {path}: {err.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(base64.b64encode(key.key).decode("ascii") + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key


# ---- at rest ---------------------------------------------------------------------------------
def is_sealed(blob: bytes) -> bool:
    return blob[:len(SEALED_MAGIC)] == SEALED_MAGIC


def _aad(header: bytes, context: str) -> bytes:
    return header + context.encode("utf-8")


def seal(key: ProfileKey, data: bytes, context: str) -> bytes:
    """``data`` sealed under ``key``, bound to ``context`` (``<profile>/<role>``)."""
    header = _SEALED_HEADER.pack(SEALED_MAGIC, SEALED_VERSION, bytes.fromhex(key.key_id), os.urandom(12))
    return header + AESGCM(key.key).encrypt(header[-12:], data, _aad(header, context))


def sealed_key_id(blob: bytes) -> str:
    if len(blob) < _SEALED_HEADER.size + 16 or not is_sealed(blob):
        raise BadSeal("not an encrypted profile file")
    _, version, kid, _ = _SEALED_HEADER.unpack_from(blob)
    if version != SEALED_VERSION:
        raise BadSeal(f"encrypted with format version {version}, this version reads {SEALED_VERSION}")
    return bytes(kid).hex()


def unseal(key: ProfileKey | None, blob: bytes, context: str) -> bytes:
    kid = sealed_key_id(blob)
    if key is None:
        raise NoKey(kid)
    if kid != key.key_id:
        raise WrongKey(kid, key.key_id)
    header = blob[:_SEALED_HEADER.size]
    try:
        return AESGCM(key.key).decrypt(header[-12:], blob[_SEALED_HEADER.size:], _aad(header, context))
    except InvalidTag:
        raise BadSeal("failed authentication: damaged, or moved from another profile's folder or file "
                      "(an encrypted profile is bound to its name)") from None


# ---- export bundles ----------------------------------------------------------------------------
def _bundle_key(passphrase: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=KEY_BYTES, n=1 << log2_n, r=r, p=p).derive(passphrase.encode("utf-8"))


def seal_bundle(meta: bytes, tokens: bytes, passphrase: str) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE:
        raise BundleError(f"the export passphrase must have at least {MIN_PASSPHRASE} characters")
    salt, nonce = os.urandom(16), os.urandom(12)
    header = _BUNDLE_HEADER.pack(BUNDLE_MAGIC, BUNDLE_VERSION, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, salt, nonce)
    key = _bundle_key(passphrase, salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)
    return header + AESGCM(key).encrypt(nonce, struct.pack(">I", len(meta)) + meta + tokens, header)


def open_bundle(blob: bytes, passphrase: str, what: str) -> tuple[bytes, bytes]:
    """(meta JSON, tokens safetensors) of a bundle; ``what`` names it in errors (its path)."""
    if len(blob) < _BUNDLE_HEADER.size + 16 or blob[:len(BUNDLE_MAGIC)] != BUNDLE_MAGIC:
        raise BundleError(f"{what} is not an expose profile bundle")
    _, version, log2_n, r, p, salt, nonce = _BUNDLE_HEADER.unpack_from(blob)
    if version != BUNDLE_VERSION:
        raise BundleError(f"{what} has bundle format {version}, this version reads {BUNDLE_VERSION}")
    if not (14 <= log2_n <= 20 and 1 <= r <= 16 and 1 <= p <= 4):  # a crafted file must not cost gigabytes
        raise BundleError(f"{what} asks for scrypt parameters out of range (n=2^{log2_n}, r={r}, p={p})")
    key = _bundle_key(passphrase, salt, log2_n, r, p)
    header = blob[:_BUNDLE_HEADER.size]
    try:
        plain = AESGCM(key).decrypt(nonce, blob[_BUNDLE_HEADER.size:], header)
    except InvalidTag:
        raise BundleError(f"cannot decrypt {what}: wrong passphrase (or the file is damaged)") from None
    (n,) = struct.unpack_from(">I", plain)
    return plain[4:4 + n], plain[4 + n:]


# ---- erasure -----------------------------------------------------------------------------------
def erase_file(path: Path) -> None:
    """Overwrite a regular file's bytes with zeros, fsync, then unlink it (a link is only unlinked).

    This defeats undelete on a plain file system; it does not reach copies an SSD's wear levelling,
    a copy-on-write file system (btrfs, ZFS, APFS) or a snapshot/backup keeps: encryption at rest is
    the protection there."""
    if path.is_file() and not path.is_symlink():
        try:
            if not os.access(path, os.W_OK):
                path.chmod(0o600)
            with open(path, "r+b", buffering=0) as f:
                left = os.fstat(f.fileno()).st_size
                zeros = bytes(min(left, 1 << 20))
                while left > 0:
                    left -= f.write(zeros[:min(left, len(zeros))])
                os.fsync(f.fileno())
        except OSError as err:
            log.warning("could not overwrite %s before deleting it (%s)", path, err)
    path.unlink(missing_ok=True)


def erase_tree(root: Path) -> None:
    """erase_file on every file under ``root`` (links are not followed), then remove the folders."""
    if root.is_symlink() or not root.exists():
        root.unlink(missing_ok=True)
        return
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        d = Path(dirpath)
        for f in filenames:
            erase_file(d / f)
        for sub in dirnames:
            if (d / sub).is_symlink():
                (d / sub).unlink()
            else:
                (d / sub).rmdir()
    root.rmdir()
    try:  # make the removal itself durable
        fd = os.open(root.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
