"""Where a dataset's files live: a local (or shared POSIX) directory, or an object store URL.

`write.py` decides *what* to write and when a shard counts as done; a `DatasetStore` only
stores whole files under flat names (`shard-000000.tar`, `manifest.json`, ...). Both kinds
keep the two promises the rest of synthgen relies on:
- `write(name, data)`: a reader sees no file or the whole file, never part of one;
- `publish_once(name, data)`: creates `name` unless it exists, atomically, so of several
  workers racing on one name exactly one wins (True) and the others change nothing (False).

`LocalStore` keeps them with a flushed temporary file per write, then `os.replace` or
`os.link` (which fails when the name exists); the filesystem must support hard links (local
disks, NFS, Lustre, GPFS and CephFS do). `FsspecStore` keeps them on object stores, where one
PUT is already whole, and exclusive creation is a conditional PUT (`If-None-Match: *`, which
fsspec asks for with `pipe_file(..., mode="create")`). Only protocols whose exclusive create is
atomic are accepted (`OBJECT_STORE_PROTOCOLS`); any other URL is refused with a message.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Protocol, Union

from synthgen.errors import UserError
from synthgen.shards import SHARD_FILE_PATTERN

# Protocols whose `pipe_file(mode="create")` is one atomic conditional write (If-None-Match);
# they need `pip install 'synthgen[s3]'`. S3-compatible servers must honour conditional PUTs.
OBJECT_STORE_PROTOCOLS = ("s3", "s3a")
# fsspec's in-process filesystem: for tests and for callers of the Python API in one process
# (worker processes would each see their own, empty, memory), so not offered by the CLI.
IN_PROCESS_PROTOCOLS = ("memory",)
# `.NAME.HOST-PID-RANDOM.tmp`: who wrote a temporary file, so only stale ones are removed.
_TEMPORARY_OWNER = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)-[0-9a-f]{16}\.tmp$")
# The temporaries of the files a dataset holds (write.py names them), with or without a writer
# tag: only these are ever removed as debris. A user's own `.notes.tmp` in --out is not one.
DATASET_TEMPORARY = re.compile(
    rf"^\.({SHARD_FILE_PATTERN}|manifest\.json|recipe\.json|index\.json|README\.md)\.(.+\.)?tmp$")
# A temporary file lives for one write (seconds at most); one this old has no writer left.
STALE_TEMPORARY_SECONDS = 15 * 60


class DatasetStore(Protocol):
    """A flat namespace of whole files: one dataset's output location."""

    location: str  # what the user passed as --out, for messages and for other workers

    def prepare(self) -> None:
        """Create the location if needed; a `UserError` if it cannot hold a dataset."""

    def check_reachable(self) -> None:
        """A `UserError` if the location cannot be read (credentials, network), before a
        command that only reads and finishes a dataset (finalize) asks it for files."""

    def names(self) -> list[str]:
        """The names of the files stored directly at the location."""

    def size(self, name: str) -> int | None:
        """The size of `name` in bytes, or None when it does not exist."""

    def read(self, name: str) -> bytes | None:
        """The bytes of `name`, or None when it does not exist."""

    def write(self, name: str, data: bytes) -> None:
        """Store `data` as `name`, replacing it; readers never see a partial file."""

    def publish_once(self, name: str, data: bytes) -> bool:
        """Create `name` holding `data` unless it exists; True if this call created it."""

    def remove(self, name: str) -> None:
        """Remove `name` if it exists."""

    def remove_stale_temporaries(self, now: float | None = None) -> list[str]:
        """Remove what killed writers left behind that no live writer will finish."""

    def sha256(self, name: str) -> str | None:
        """The hex sha256 of `name`'s bytes, read once as a stream; None when it does not exist."""

    def remove_folder(self, name: str) -> None:
        """Remove the folder `name` and everything under it, if it exists."""


Location = Union[str, os.PathLike, DatasetStore]


def is_url(location: str | os.PathLike) -> bool:
    return isinstance(location, str) and "://" in location


def parse_location(text: str | os.PathLike,
                   protocols: tuple[str, ...] = OBJECT_STORE_PROTOCOLS + IN_PROCESS_PROTOCOLS,
                   option: str = "--out") -> Path | str:
    """`--out` as given -> a local path (`file://` URLs too), or a URL of one of `protocols`;
    any other URL is a `UserError` that says what to do instead."""
    if not str(text).strip():
        # Path("") is the current folder: `--out "$OUT"` with OUT unset would write there.
        raise UserError("the dataset location is empty; name the dataset's folder (or URL), "
                        "e.g. out/my-dataset")
    if not is_url(text):
        return Path(text)
    protocol, rest = text.split("://", 1)
    protocol = protocol.lower()
    if protocol == "file":
        if not rest.strip():  # Path("") is the current folder, as above
            raise UserError(f"{option} {text}: the URL names no folder; write file:///PATH "
                            "or the path itself")
        return Path(rest)
    if protocol in OBJECT_STORE_PROTOCOLS and not rest.strip("/").strip():
        # fsspec would read a URL without a bucket as a local folder named "s3:".
        raise UserError(f"{option} {text}: the URL names no bucket; write "
                        f"{protocol}://BUCKET/PREFIX")
    if protocol not in protocols:
        raise UserError(
            f"{option} {text}: {protocol}:// is not a supported store; synthgen writes to "
            f"{', '.join(p + '://' for p in protocols)} URLs (their exclusive create is atomic, "
            "so racing workers cannot both publish a shard) and to local or mounted paths; "
            "mount the storage and pass its path, or write locally and copy the finished "
            "directory")
    return text


def open_store(location: Location) -> DatasetStore:
    """The store for `--out`: a URL (`s3://bucket/prefix`) or a local path (`file://` too)."""
    if isinstance(location, (LocalStore, FsspecStore)):
        return location
    parsed = parse_location(location)
    return LocalStore(parsed) if isinstance(parsed, Path) else FsspecStore(parsed)


def write_atomically(path: Path, data: bytes) -> None:
    """Write a local file whole: a flushed temporary beside `path`, renamed over it.

    A reader sees either no file or the whole file; two writers racing on one path leave
    exactly one whole file (the last one's).
    """
    temporary = _write_temporary(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def host_tag() -> str:
    """This host and PID namespace, as a temporary name records them.

    Within one tag, a pid that does not run is proof that its writer is dead. The PID
    namespace is part of the tag because a process in another one on the same host (a
    container sharing the hostname) has pids that mean nothing here; without /proc (macOS,
    the BSDs) there are no PID namespaces, and the hostname alone is the tag.
    """
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
    try:
        return f"{host}_pidns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return host


# The part of the target's name a temporary name keeps: the writer's tag adds ~50 characters
# and the host name, and a file name may have 255 bytes in all (NAME_MAX on Linux and macOS).
_TEMPORARY_NAME_KEPT = 64


def temporary_path(path: Path) -> Path:
    """A fresh temporary name beside `path` that says which host and process writes it."""
    name = path.name
    if len(name.encode()) > _TEMPORARY_NAME_KEPT:  # a short digest keeps long names apart
        name = (name.encode()[:_TEMPORARY_NAME_KEPT - 17].decode(errors="ignore")
                + "-" + hashlib.sha256(path.name.encode()).hexdigest()[:16])
    # Not mkstemp, whose 0600 mode would survive the rename.
    return path.with_name(f".{name}.{host_tag()}-{os.getpid()}-{secrets.token_hex(8)}.tmp")


def _write_temporary(path: Path, data: bytes) -> Path:
    temporary = temporary_path(path)
    try:
        with open(temporary, "xb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


class LocalStore:
    """A directory on a POSIX filesystem, shared by every worker that writes into it.

    Temporary names carry host and pid (`.NAME.HOST-PID-RANDOM.tmp`), so
    `remove_stale_temporaries` removes only files whose writer is gone, never a live one's.
    """

    def __init__(self, root: Path):
        # Absolute, because workers (processes, Ray actors) may run in another directory.
        self.root = Path(root).absolute()
        self.location = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({self.location!r})"

    def check_reachable(self) -> None:
        pass  # a local folder's problems are the OSErrors the commands already explain

    def prepare(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--out {self.root}: exists and is not a directory; choose another path")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"--out {self.root}: cannot be created ({error.strerror}); choose a "
                            "path you can write to") from None

    def names(self) -> list[str]:
        return sorted(entry.name for entry in self.root.iterdir() if entry.is_file())

    def size(self, name: str) -> int | None:
        try:
            return (self.root / name).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write(self, name: str, data: bytes) -> None:
        write_atomically(self.root / name, data)

    def publish_once(self, name: str, data: bytes) -> bool:
        # The whole file appears at once (a link to a flushed temporary), and `os.link`
        # fails when the name exists, so exactly one of several racing writers wins.
        temporary = _write_temporary(self.root / name, data)
        try:
            os.link(temporary, self.root / name)
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)

    def remove(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def sha256(self, name: str) -> str | None:
        try:
            with (self.root / name).open("rb") as stream:
                return hashlib.file_digest(stream, "sha256").hexdigest()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def remove_folder(self, name: str) -> None:
        folder = self.root / name
        if folder.is_symlink():  # e.g. reports kept on another disk: the link goes, not its files
            folder.unlink()
        elif folder.is_dir():
            shutil.rmtree(folder)

    def remove_stale_temporaries(self, now: float | None = None) -> list[str]:
        """Stale: the name carries no writer (older synthgen versions), the file is older
        than `STALE_TEMPORARY_SECONDS`, or its writer is a process of this host and PID
        namespace (`host_tag`) that no longer runs, whatever the file's age: a rerun right
        after a kill removes what the killed workers left."""
        now = time.time() if now is None else now
        host = host_tag()
        removed = []
        for entry in self.root.iterdir():
            if not DATASET_TEMPORARY.match(entry.name):
                continue
            owner = _TEMPORARY_OWNER.match(entry.name)
            try:
                age = now - entry.stat().st_mtime
            except FileNotFoundError:  # its writer renamed it meanwhile
                continue
            stale = (owner is None or age > STALE_TEMPORARY_SECONDS
                     or (owner["host"] == host and not _process_alive(int(owner["pid"]))))
            if stale:
                entry.unlink(missing_ok=True)
                removed.append(entry.name)
        return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


class FsspecStore:
    """A prefix in an object store, through fsspec (`s3://bucket/prefix`, `memory://name`).

    Credentials and endpoints come from the usual places of the protocol's library (for S3:
    `AWS_*` variables, `~/.aws`, instance roles) or from fsspec's configuration, e.g.
    `FSSPEC_S3_ENDPOINT_URL=http://minio:9000` for an S3-compatible server. Object stores
    have no temporary files: a killed writer leaves either a whole object or none.
    """

    def __init__(self, url: str):
        if not isinstance(parse_location(url), str):
            raise ValueError(f"{url}: a local path; open it with open_store (a LocalStore)")
        self.protocol = url.split("://", 1)[0].lower()
        self.location = url.rstrip("/")
        self._fs = None

    def __repr__(self) -> str:
        return f"FsspecStore({self.location!r})"

    def __getstate__(self) -> dict:
        # Each process (worker, Ray actor) opens its own connection.
        return {"protocol": self.protocol, "location": self.location, "_fs": None}

    @property
    def fs(self):
        if self._fs is None:
            self._fs, self._root = _filesystem(self.location)
        return self._fs

    def _path(self, name: str) -> str:
        self.fs  # noqa: B018 - sets _root
        return f"{self._root}/{name}"

    def prepare(self) -> None:
        self._check(create=True)

    def check_reachable(self) -> None:
        self._check(create=False)

    def _check(self, create: bool) -> None:
        # Named as generate's --out where it prepares; finalize names the place alone.
        place = f"--out {self.location}" if create else self.location
        root = self._path("").rstrip("/")
        try:
            if self.protocol in ("s3", "s3a"):
                # Only check: creating a bucket is an account-level act, not synthgen's.
                bucket = root.split("/", 1)[0]
                if not self.fs.exists(bucket):
                    raise UserError(f"{place}: bucket {bucket!r} does not exist "
                                    "(or these credentials cannot see it); create it first, or "
                                    "check the name and the endpoint")
            elif create:
                self.fs.makedirs(root, exist_ok=True)
            else:
                self.fs.exists(root)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - credentials, network: one clear message
            raise UserError(f"{place}: cannot be reached ({type(error).__name__}: "
                            f"{error}); check the credentials and the endpoint "
                            "(FSSPEC_S3_ENDPOINT_URL for an S3-compatible server)") from None

    def names(self) -> list[str]:
        root = self._path("").rstrip("/")
        self.fs.invalidate_cache(root)
        try:
            entries = self.fs.ls(root, detail=True)
        except FileNotFoundError:
            return []
        return sorted(entry["name"].rsplit("/", 1)[-1] for entry in entries
                      if entry.get("type") == "file")

    def size(self, name: str) -> int | None:
        path = self._path(name)
        # Other workers write here at the same time: never trust a cached listing.
        self.fs.invalidate_cache(path)
        try:
            return int(self.fs.info(path)["size"])
        except FileNotFoundError:
            return None

    def read(self, name: str) -> bytes | None:
        path = self._path(name)
        self.fs.invalidate_cache(path)
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(name), data)

    def publish_once(self, name: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self._path(name), data, mode="create")
            return True
        except FileExistsError:
            return False

    def remove(self, name: str) -> None:
        path = self._path(name)
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(path)

    def remove_stale_temporaries(self, now: float | None = None) -> list[str]:
        return []  # one PUT is whole: nothing half-written is ever left behind

    def sha256(self, name: str) -> str | None:
        path = self._path(name)
        self.fs.invalidate_cache(path)
        try:
            with self.fs.open(path, "rb") as stream:
                return hashlib.file_digest(stream, "sha256").hexdigest()
        except FileNotFoundError:
            return None

    def remove_folder(self, name: str) -> None:
        path = self._path(name)
        self.fs.invalidate_cache(path)
        if self.fs.isdir(path):
            # File by file: `rm` expands glob characters, and `--out s3://b/ds[1]` would
            # remove s3://b/ds1/audit instead of its own.
            for file in self.fs.find(path):
                self.fs.rm_file(file)
            try:
                self.fs.rmdir(path)  # a store with real folders (memory://, local) keeps it otherwise
            except (OSError, NotImplementedError):
                pass
        self.fs.invalidate_cache(path)


def _filesystem(url: str):
    import fsspec

    try:
        # A filesystem of its own, not fsspec's cached instance: that keeps the credentials of
        # the environment it was first made in, so a process that made one before the user's
        # AWS settings were in place (a notebook, the Python API) would never see them.
        return fsspec.core.url_to_fs(url, skip_instance_cache=True)
    except ImportError as error:
        protocol = url.split("://", 1)[0]
        raise UserError(f"--out {url}: writing to {protocol}:// needs its fsspec backend "
                        f"({error}); install it with pip install 'synthgen[s3]'") from None
