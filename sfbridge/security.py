"""Access control: who may reach the daemon's sockets (docs/PROTOCOL.md "Security").

Why a module of its own: the rule must be the same for every server socket (control, frames, and any
later one), and the Python client, the CLI and the viewer must read key files the same way.

* **Where the daemon may listen.** Loopback (127.0.0.0/8, ``::1``, ``localhost``), ``ipc://`` (a
  file, made owner-only after bind) and ``inproc://`` reach only this machine's users. Any other
  bind (``tcp://0.0.0.0``, ``tcp://*``, a LAN address, an interface name, a Linux abstract
  ``ipc://@name``) is refused unless CurveZMQ is configured, or ``--insecure`` says the network is
  trusted (then a loud warning goes to the log and to ``status.warnings``).
* **CurveZMQ** (RFC 26) with a ZAP handler (RFC 27): pyzmq's :class:`ThreadAuthenticator` on the
  daemon's context admits only the client public keys found in ``--curve-allow DIR``. A client with
  another key fails the handshake: it never gets a reply or a frame, only a timeout.
* **Key files** are czmq/pyzmq certificates (``zmq.auth.load_certificate`` reads them): ``NAME.key``
  holds the z85 public key, ``NAME.key_secret`` (mode 0600) both keys.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger("sfbridge.security")

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
Z85_KEY_CHARS = 40  # a 32-byte Curve25519 key in z85
REFUSAL_LOG_PERIOD_S = 10.0  # at most one log line per period about refused keys, however many arrive
CLIENT_ENV = {"server_key": "SFBRIDGE_SERVER_KEY", "client_key": "SFBRIDGE_CLIENT_KEY"}
SETUP_HINT = "see docs/PROTOCOL.md 'Security'"


class AccessError(ValueError):
    """A bind the access rule refuses, or an unusable key file; the message says what to do."""


# --- where the daemon may listen ---------------------------------------------------------------------------


def is_local_endpoint(endpoint: str) -> bool:
    """True when only this machine can reach ``endpoint``: loopback TCP, an ``ipc://`` file, ``inproc://``.

    A Linux abstract socket (``ipc://@name``) has no file and so no permissions: any local user, and
    anything sharing the network namespace, can connect; it counts as not local.
    """
    scheme, _, rest = endpoint.partition("://")
    if scheme == "inproc":
        return True
    if scheme == "ipc":
        return not rest.startswith("@")
    if scheme != "tcp":
        return False
    host = rest.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", a host name, an interface name ("eth0", "wg0"): it may face a network
        return False


def check_bind(endpoints: dict[str, str], curve: bool, insecure: bool) -> list[str]:
    """Apply the access rule to ``{label: endpoint}``; returns the warnings for the log and ``status``.

    Raises :class:`AccessError` for a non-local bind without CURVE or ``insecure``.
    """
    remote = {label: ep for label, ep in endpoints.items() if not is_local_endpoint(ep)}
    if not remote or curve:
        return []
    listed = ", ".join(f"{label} {ep}" for label, ep in remote.items())
    if not insecure:
        raise AccessError(f"{listed}: reachable from other machines (not loopback or an ipc:// file), and with no "
                          "authentication anyone who reaches it could steer and watch the stream. Configure CurveZMQ "
                          "(`sfbridge keygen`, then serve --curve-secret FILE --curve-allow DIR), tunnel to a loopback "
                          f"bind (SSH or WireGuard), or pass --insecure on a network you trust; {SETUP_HINT}")
    return [f"INSECURE: {listed} accept anyone who can reach them, unauthenticated and unencrypted (--insecure)"]


def make_owner_only(endpoint: str) -> None:
    """An ``ipc://`` socket file gets mode 0600 (connecting needs write permission on it); checked after.

    libzmq creates the file with the process umask (typically 0755): other local users could connect.
    The file exists between bind and this chmod for a moment, so put it in a 0700 directory as well.
    """
    scheme, _, path = endpoint.partition("://")
    if scheme != "ipc" or path.startswith("@"):
        return
    os.chmod(path, 0o600)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise AccessError(f"{endpoint}: socket file is mode {mode:04o} after chmod 0600; other users could connect")


# --- key files -----------------------------------------------------------------------------------------------


def check_key_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or os.sep in name or name.startswith("."):
        raise AccessError(f"key name {name!r}: use a plain file name such as 'daemon' or 'laptop'")
    return name


def _certificate(public: bytes, secret: bytes | None) -> str:
    """czmq's ZPL certificate text, as ``zmq.auth.create_certificates`` writes it (both read it back)."""
    kind = "Secret" if secret else "Public"
    advice = ("Keep this file to yourself (mode 0600)." if secret
              else "Give this file to the other side: a daemon's --curve-allow DIR or a client's --server-key.")
    lines = [f"#   ZeroMQ CURVE {kind} Certificate (sfbridge keygen)", f"#   {advice}",
             "", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int, force: bool) -> None:
    """Write through a fresh file created with ``mode`` (never a chmod after the fact), then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile: never overwrite without --force
            os.unlink(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def keygen(name: str, directory: str | Path = ".", force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (both keys, 0600) into ``directory``.

    Refuses to overwrite either file unless ``force``; creates ``directory`` (0700) when missing.
    """
    check_key_name(name)
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise AccessError(f"--dir {str(folder)!r} is not a directory")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_path, secret_path = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    existing = [str(p) for p in (public_path, secret_path) if p.exists()]
    if existing and not force:
        raise AccessError(f"{' and '.join(existing)} already exist; pass --force to replace them (clients or "
                          "daemons using the old key will be refused)")
    public, secret = zmq.curve_keypair()
    try:
        _write(secret_path, _certificate(public, secret), 0o600, force)
        _write(public_path, _certificate(public, None), 0o644, force)
    except FileExistsError as exc:
        raise AccessError(f"{exc.filename}: appeared while writing; pass --force to replace it") from None
    except OSError as exc:
        raise AccessError(f"cannot write keys in {str(folder)!r}: {exc.strerror}") from None
    return public_path, secret_path


def _check_z85(key: bytes | None, what: str, path: Path, label: str) -> bytes:
    if key is None or len(key) != Z85_KEY_CHARS:
        raise AccessError(f"{label} {str(path)!r}: the {what} key is not a {Z85_KEY_CHARS}-character z85 key")
    try:
        z85.decode(key)
    except (ValueError, KeyError, TypeError):
        raise AccessError(f"{label} {str(path)!r}: the {what} key is not valid z85") from None
    return key


def _read(path: str | Path, label: str) -> tuple[Path, bytes, bytes | None]:
    p = Path(path)
    if not p.exists():
        raise AccessError(f"{label} {str(p)!r}: no such file (create keys with `sfbridge keygen NAME`)")
    if p.is_dir():
        raise AccessError(f"{label} {str(p)!r} is a directory; give a key file")
    try:
        public, secret = zmq.auth.load_certificate(p)
    except PermissionError:
        raise AccessError(f"{label} {str(p)!r}: not readable by this user") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise AccessError(f"{label} {str(p)!r}: not a key file (no public-key line; "
                          "`sfbridge keygen` writes them)") from None
    return p, _check_z85(public, "public", p, label), secret


def read_public_key(path: str | Path, label: str) -> bytes:
    """The z85 public key of a ``.key`` (or ``.key_secret``) file, checked."""
    p, public, secret = _read(path, label)
    if secret is not None:
        log.warning("%s %s holds a secret key: the other side needs only the public %s file; keep secret files "
                    "on the machine they belong to", label, p, PUBLIC_SUFFIX)
    return public


def read_key_pair(path: str | Path, label: str) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a ``.key_secret`` file; checks that they belong together."""
    p, public, secret = _read(path, label)
    if secret is None:
        raise AccessError(f"{label} {str(p)!r} holds only a public key; give the {SECRET_SUFFIX} file")
    _check_z85(secret, "secret", p, label)
    if zmq.curve_public(secret) != public:
        raise AccessError(f"{label} {str(p)!r}: its secret key does not match its public key (edited file?)")
    if stat.S_IMODE(p.stat().st_mode) & 0o077:
        log.warning("%s %s is readable by other users (mode %04o): chmod 600 it", label, p,
                    stat.S_IMODE(p.stat().st_mode))
    return public, secret


def read_allowed_keys(directory: str | Path, label: str) -> dict[bytes, str]:
    """The client public keys of every ``*.key`` file in ``directory`` -> the file name they came from."""
    folder = Path(directory)
    if not folder.is_dir():
        raise AccessError(f"{label} {str(folder)!r}: no such directory (put each client's NAME.key there)")
    keys = {read_public_key(f, label): f.name for f in sorted(folder.glob(f"*{PUBLIC_SUFFIX}"))}
    if not keys:
        raise AccessError(f"{label} {str(folder)!r} holds no *{PUBLIC_SUFFIX} file: no client could connect "
                          "(copy each client's public NAME.key there)")
    return keys


# --- the daemon's side ---------------------------------------------------------------------------------------


@dataclass
class KeyRing:
    """pyzmq's ZAP callback: admits the keys of ``allowed``, counts and (rate-limited) logs the rest."""

    allowed: dict[bytes, str]
    source: str
    admitted: int = 0
    refused: int = 0
    _last_log: float = field(default=-1e9, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.allowed
        with self._lock:
            if ok:
                self.admitted += 1
                return True
            self.refused += 1
            now = time.monotonic()
            if now - self._last_log < REFUSAL_LOG_PERIOD_S:
                return False
            self._last_log = now
        log.warning("refused a CURVE client with key %s: not in %s (%d refused so far)", key[:8].decode() + "...",
                    self.source, self.refused)
        return False


class ServerAccess:
    """What each server socket of one daemon gets: CURVE server keys behind the ZAP handler, or NULL.

    Start it before the first bind; :meth:`bind` is the one way a daemon socket binds.
    """

    def __init__(self, public: bytes | None = None, secret: bytes | None = None,
                 allowed: dict[bytes, str] | None = None, source: str = "") -> None:
        self.public, self.secret = public, secret
        self.keys = KeyRing(allowed or {}, source) if secret else None
        self.warnings: list[str] = []
        self._auth: ThreadAuthenticator | None = None

    @classmethod
    def configure(cls, endpoints: dict[str, str], curve_secret: str | None = None, curve_allow: str | None = None,
                  insecure: bool = False) -> ServerAccess:
        """Read the keys and apply the bind rule to ``{label: endpoint}``; raises :class:`AccessError`."""
        if (curve_secret is None) != (curve_allow is None):
            raise AccessError("--curve-secret and --curve-allow go together: the daemon's key pair and the "
                              f"directory of client keys it admits; {SETUP_HINT}")
        access = cls()
        if curve_secret is not None and curve_allow is not None:
            public, secret = read_key_pair(curve_secret, "--curve-secret")
            access = cls(public, secret, read_allowed_keys(curve_allow, "--curve-allow"), str(curve_allow))
        access.warnings = check_bind(endpoints, curve=access.curve, insecure=insecure)
        for warning in access.warnings:
            log.warning("%s", warning)
        return access

    @property
    def curve(self) -> bool:
        return self.secret is not None

    def start(self, ctx: zmq.Context) -> None:
        """Install the ZAP handler on ``ctx`` (CURVE only). Without it libzmq would admit any client key."""
        if self.keys is None or self._auth is not None:
            return
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("sfbridge.security.zap"))
        self._auth.start()
        self._auth.configure_curve_callback("*", self.keys)
        log.info("CURVE on: %d client key(s) admitted from %s", len(self.keys.allowed), self.keys.source)

    def bind(self, sock: zmq.Socket, endpoint: str) -> str:
        """Configure ``sock`` as a CURVE server (when on), bind it, make an ipc file owner-only; the bound endpoint."""
        if self.curve:
            if self._auth is None:
                raise RuntimeError("ServerAccess.start() must run before bind: no ZAP handler, every key would pass")
            sock.curve_secretkey = self.secret
            sock.curve_publickey = self.public
            sock.curve_server = True
        sock.bind(endpoint)
        bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        make_owner_only(bound)
        return bound

    def alive(self) -> bool:
        """False once the ZAP thread has died (the daemon must not run on without it)."""
        return self._auth is None or self._auth.is_alive()

    def stop(self) -> None:
        """Before ``ctx.term()``: the ZAP socket would otherwise keep the context open."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def snapshot(self) -> dict:
        """``status.security``: the mechanism and, under CURVE, the admitted/refused handshake counts."""
        if self.keys is None:
            return {"mechanism": "NULL"}
        return {"mechanism": "CURVE", "allowed_keys": len(self.keys.allowed), "admitted": self.keys.admitted,
                "refused": self.keys.refused}


# --- the client's side ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientKeys:
    """A client's CURVE settings: the daemon's public key and this client's key pair (all z85)."""

    server_public: bytes
    public: bytes
    secret: bytes = field(repr=False)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the daemon; before ``connect``."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


def key_settings(server_key: str | os.PathLike | None, client_key: str | os.PathLike | None,
                 labels: tuple[str, str] = ("server_key", "client_key")) -> tuple[tuple[str, str] | None, ...]:
    """``((path, label) or None, (path, label) or None)``: each argument, else its ``SFBRIDGE_*`` variable."""
    out = []
    for value, label, var in ((server_key, labels[0], CLIENT_ENV["server_key"]),
                              (client_key, labels[1], CLIENT_ENV["client_key"])):
        if value is not None:
            out.append((os.fspath(value), label))
        elif os.environ.get(var):
            out.append((os.environ[var], var))
        else:
            out.append(None)
    return tuple(out)


def client_keys(server_key: str | os.PathLike | None = None, client_key: str | os.PathLike | None = None,
                labels: tuple[str, str] = ("server_key", "client_key")) -> ClientKeys | None:
    """CURVE settings for a client from files (arguments, then ``SFBRIDGE_SERVER_KEY`` / ``SFBRIDGE_CLIENT_KEY``);
    None when neither is set (NULL, for a loopback daemon). Raises :class:`AccessError` naming the setting."""
    server, client = key_settings(server_key, client_key, labels)
    if server is None and client is None:
        return None
    if server is None or client is None:
        given = (server or client)[1]
        missing = f"{labels[0]} (or {CLIENT_ENV['server_key']})" if server is None else \
            f"{labels[1]} (or {CLIENT_ENV['client_key']})"
        raise AccessError(f"{given} needs {missing} too: CURVE needs the daemon's public key (its NAME.key) and this "
                          "client's key pair (a NAME.key_secret whose NAME.key is in the daemon's --curve-allow DIR)")
    public, secret = read_key_pair(*client)
    return ClientKeys(read_public_key(*server), public, secret)
