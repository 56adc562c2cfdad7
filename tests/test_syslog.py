"""The syslog sink against a real rsyslogd: RFC 5424 + CEF over UDP, TCP (octet counting) and
TLS, the reconnect after the collector dies, and the escaping / framing by hand.

Each test starts its own rsyslogd in the foreground on a free unprivileged port, with a
config in tmp_path that writes every received message, raw (``%rawmsg%``), one per line to
a file; the test reads that file. Skips when rsyslogd (Debian: rsyslog, rsyslog-gnutls) is
not installed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from expose.exporters.base import EventFilter
from expose.exporters.syslog import (
    SyslogSink,
    cef_header_escape,
    cef_value_escape,
    octet_frame,
    sd_escape,
    truncate_utf8,
)
from expose.monitor import __version__
from expose.monitor.alerts.events import Event, event_from
from expose.monitor.config import SyslogExporterConfig

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
TS = 1_780_000_000.25  # 2026-05-28T20:26:40.250Z
PROFILE = 'ali|ce=x\\y\nz "q]'  # every character CEF or RFC 5424 escapes
EXPLANATION = "face = not her | back\\slash\r\nsecond line"


# ---- a throwaway CA and rsyslogd ---------------------------------------------------------

@dataclass
class Tls:
    ca: Path
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(folder: Path, cn: str = "expose test CA") -> Tls:
    """A CA and a server certificate it signed, for localhost and 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder(subject_name=_name(cn), issuer_name=_name(cn), public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), not_valid_before=start,
                                  not_valid_after=end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder(subject_name=_name("localhost"), issuer_name=ca.subject,
                                    public_key=key.public_key(), serial_number=x509.random_serial_number(),
                                    not_valid_before=start, not_valid_after=end)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    tls = Tls(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return tls


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int, udp: bool) -> bool:
    """Whether some socket listens on the port (/proc/net: hex port, TCP state 0A = LISTEN, UDP 07)."""
    files, state = (("udp", "udp6"), "07") if udp else (("tcp", "tcp6"), "0A")
    for name in files:
        try:
            rows = Path("/proc/net", name).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[1].endswith(f":{port:04X}") and cols[3] == state:
                return True
    return False


class Rsyslogd:
    """One rsyslogd in the foreground, with one input, writing what it receives raw to ``out``."""

    def __init__(self, folder: Path, transport: str, tls: Tls | None = None) -> None:
        self.folder, self.transport, self.tls = folder, transport, tls
        self.port = free_port(socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
        self.out = folder / "received.log"
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        g = f'global(workDirectory="{folder}"'
        if tls:
            g += (f' defaultNetstreamDriverCAFile="{tls.ca}" defaultNetstreamDriverCertFile="{tls.cert}"'
                  f' defaultNetstreamDriverKeyFile="{tls.key}"')
        module = "imudp" if transport == "udp" else "imtcp"
        driver = (' streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon"'
                  if transport == "tls" else "")
        self.conf = folder / "rsyslog.conf"
        self.conf.write_text("\n".join([
            g + ")",
            f'module(load="{module}")',
            'template(name="raw" type="string" string="%rawmsg%\\n")',
            f'ruleset(name="remote") {{ action(type="omfile" file="{self.out}" template="raw") }}',
            f'input(type="{module}" port="{self.port}" ruleset="remote"{driver})',
            "",
        ]))

    def start(self) -> None:
        (self.folder / "rsyslogd.pid").unlink(missing_ok=True)
        with open(self.folder / "rsyslogd.err", "ab") as err:  # the daemon keeps its own copy
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.folder / "rsyslogd.pid")],
                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 10
        while not _listening(self.port, self.transport == "udp"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {(self.folder / 'rsyslogd.err').read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"rsyslogd does not listen on {self.port}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def lines(self) -> list[str]:
        return self.out.read_text(encoding="utf-8").splitlines() if self.out.exists() else []

    async def wait_lines(self, n: int, timeout: float = 10.0) -> list[str]:
        """The received lines, once there are at least ``n`` (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        while len(lines := self.lines()) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return lines


@pytest.fixture
def daemons(tmp_path: Path) -> Any:
    if not Path(RSYSLOGD).is_file():
        pytest.skip(f"rsyslogd not installed ({RSYSLOGD}; Debian: apt-get install rsyslog rsyslog-gnutls)")
    started: list[Rsyslogd] = []

    def make(transport: str, tls: Tls | None = None, start: bool = True) -> Rsyslogd:
        d = Rsyslogd(tmp_path / f"rsyslog-{transport}-{len(started)}", transport, tls)
        started.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in started:
        d.kill()


# ---- events and parsers ------------------------------------------------------------------

def alert(action: str, seq: int, **change: Any) -> Event:
    a: dict[str, Any] = {
        "id": "0123456789abcdef", "stream": "cam-1", "profile": PROFILE, "threshold": 0.5,
        "opened_at": TS - 10, "t_start": 12.0, "t_end": None, "ended_at": None, "peak_distance": 0.9,
        "mean_distance": 0.7, "n_windows": 3, "reasons": {"face": 2, "voice": 1}, "explanation": EXPLANATION,
        "status": "open", "acknowledged_by": None, "acknowledged_at": None, "closed_by": None, "closed_at": None,
        "close_reason": None, "active": True, "scores": [[13.0, 0.6], [14.0, 0.9]], "thumbnail_jpeg": None,
    }
    a.update(change)
    return event_from(seq, "alert", "cam-1", TS, {"action": action, "alert": a})


def score(seq: int) -> Event:
    return event_from(seq, "score", "cam-1", TS, {
        "profile": PROFILE, "t0": 10.0, "t1": 14.0, "status": "scored", "distance": 0.8, "smoothed": 0.7,
        "threshold": 0.5, "z": 2.0, "identity": 0.5, "sync": 0.1, "fit": -3.0, "face_ratio": 1.0,
        "speech_ratio": 0.8, "reason": "", "state": "alert", "latency_s": 0.2, "alert_id": "0123456789abcdef",
    })


def phase(seq: int) -> Event:
    return event_from(seq, "stream", "cam-1", TS, {"action": "phase", "phase": "failed", "reason": "gave up",
                                                   "reconnects": 5})


RFC5424 = re.compile(
    r"<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<host>[!-~]{1,255}) "
    r"(?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    r'(?P<sd>-|(?:\[[^ =\]"]+(?: [^ =\]"]+="(?:[^"\\\]]|\\.)*")*\])+) (?P<msg>.*)')
SD_PARAM = re.compile(r'([^ =\]"]+)="((?:[^"\\\]]|\\.)*)"')
EXT_KEY = re.compile(r"(?:^| )([A-Za-z0-9_]+)=")
UNESCAPE = {"\\": "\\", "=": "=", "n": "\n", "r": "\r", "|": "|", '"': '"', "]": "]"}


def unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: UNESCAPE[m.group(1)], s)


def parse_cef(msg: str) -> tuple[list[str], dict[str, str]]:
    """The 7 header fields and the extension of a CEF record, escapes honoured."""
    header: list[str] = []
    field, i = "", 0
    while len(header) < 7:
        c = msg[i]
        if c == "\\":
            field += msg[i + 1]
            i += 2
            continue
        if c == "|":
            header.append(field)
            field = ""
        else:
            field += c
        i += 1
    ext = msg[i:]
    # values never hold a bare '=' (it is escaped), so every " key=" starts a pair
    keys = list(EXT_KEY.finditer(ext))
    pairs = {}
    for k, nxt in zip(keys, keys[1:] + [None], strict=True):
        pairs[k.group(1)] = unescape(ext[k.end(): nxt.start() if nxt else len(ext)])
    return header, pairs


def parse(line: str) -> tuple[dict[str, str], dict[str, str], list[str], dict[str, str]]:
    """RFC 5424 header fields, SD params, CEF header and CEF extension of one received line."""
    m = RFC5424.fullmatch(line)
    assert m, f"not RFC 5424: {line!r}"
    sd = {k: unescape(v) for k, v in SD_PARAM.findall(m["sd"])}
    header, ext = parse_cef(m["msg"])
    return m.groupdict(), sd, header, ext


def check_alert_line(line: str, action: str, seq: int, app: str = "expose-test") -> dict[str, str]:
    head, sd, cef, ext = parse(line)
    sev = {"opened": ("3", "8"), "acknowledged": ("4", "5")}[action]
    assert head["pri"] == str(10 * 8 + int(sev[0]))  # facility 10 (authpriv)
    assert head["ts"] == "2026-05-28T20:26:40.250Z"
    assert (head["host"], head["app"], head["procid"]) == (socket.gethostname(), app, str(os.getpid()))
    assert head["msgid"] == f"alert.{action}"
    assert sd == {"seq": str(seq), "stream": "cam-1"}
    assert cef[0] == "CEF:0" and cef[1:5] == ["expose", "expose", __version__, f"alert.{action}"]
    assert cef[6] == sev[1]
    assert ext["rt"] == "1780000000250" and ext["start"] == "1779999990250" and "end" not in ext
    assert ext["act"] == action and ext["cat"] == "alert" and ext["externalId"] == "0123456789abcdef"
    assert (ext["cs1Label"], ext["cs1"]) == ("claimedProfile", PROFILE)
    assert (ext["cs2Label"], ext["cs2"]) == ("stream", "cam-1")
    assert (ext["cs3Label"], ext["cs3"]) == ("verdict", "artificial")
    # logistic of (0.7 - 0.5) / 0.5 * 4 = 1.6: 1 / (1 + e^-1.6) = 0.8320
    assert (ext["cfp1Label"], ext["cfp1"]) == ("score", "0.832")
    assert (ext["cfp2"], ext["cfp3"], ext["cfp4"]) == ("0.7", "0.9", "0.5")
    assert (ext["cn1Label"], ext["cn1"], ext["cn2"]) == ("seq", str(seq), "3")
    assert (ext["cs4Label"], ext["cs4"]) == ("explanation", EXPLANATION)
    assert ext["cs6"] == "face:2,voice:1"
    assert ext["msg"].endswith(f"is not '{PROFILE}'; {EXPLANATION}")
    return ext


# ---- against rsyslogd --------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_alerts_reach_rsyslogd(daemons: Any, tmp_path: Path, transport: str) -> None:
    tls = make_ca(tmp_path / "pki") if transport == "tls" else None
    d = daemons(transport, tls)
    config = SyslogExporterConfig(host="127.0.0.1", port=d.port, transport=transport, app_name="expose-test",
                                  ca_file=tls.ca if tls else None, server_name="localhost" if tls else None)
    sink = SyslogSink(config, EventFilter.of(config.types, config.min_severity, config.streams), name="siem")

    async def scenario() -> list[str]:
        await sink.send(alert("opened", 10))
        await sink.send(score(11))  # types = ["alert"]: not forwarded
        await sink.send(alert("acknowledged", 12, status="acknowledged", acknowledged_by="ana=lyst|1",
                              acknowledged_at=TS))
        lines = await d.wait_lines(2)
        await sink.close()
        return lines

    lines = asyncio.run(scenario())
    assert len(lines) == 2, lines
    check_alert_line(lines[0], "opened", 10)
    assert "suser" not in parse(lines[0])[3]
    ext = check_alert_line(lines[1], "acknowledged", 12)
    assert ext["suser"] == "ana=lyst|1"
    time.sleep(0.2)
    assert len(d.lines()) == 2  # the score never arrives
    assert (sink.counts.delivered, sink.counts.retried, sink.counts.dropped) == (2, 0, 0)


def test_score_and_stream_events_when_selected(daemons: Any) -> None:
    d = daemons("tcp")
    config = SyslogExporterConfig(host="127.0.0.1", port=d.port, transport="tcp", types=["score", "stream"],
                                  min_severity="info", facility=4)
    sink = SyslogSink(config, EventFilter.of(config.types, config.min_severity, config.streams))

    async def scenario() -> list[str]:
        await sink.send(score(1))
        await sink.send(phase(2))
        await sink.send(alert("opened", 3))  # not a selected type
        lines = await d.wait_lines(2)
        await sink.close()
        return lines

    lines = asyncio.run(scenario())
    assert len(lines) == 2, lines
    head, sd, cef, ext = parse(lines[0])
    assert (head["pri"], head["app"], head["msgid"]) == (str(4 * 8 + 6), "expose", "score")
    assert cef[4:] == ["score", "Window scored", "1"]
    assert (ext["act"], ext["cs1"], ext["cs3"], ext["cfp2"], ext["cfp3"], ext["cfp4"]) == (
        "scored", PROFILE, "artificial", "0.7", "0.8", "0.5")
    head, sd, cef, ext = parse(lines[1])
    assert (head["pri"], head["msgid"], sd["seq"]) == (str(4 * 8 + 4), "stream.phase", "2")
    assert cef[4:] == ["stream.phase", "Stream phase changed", "5"]
    assert (ext["act"], ext["outcome"], ext["cs5"], ext["cn3"]) == ("phase", "failed", "gave up", "5")


def test_udp_cuts_a_long_message(daemons: Any) -> None:
    d = daemons("udp")
    sink = SyslogSink(SyslogExporterConfig(host="127.0.0.1", port=d.port))

    async def scenario() -> list[str]:
        await sink.send(alert("opened", 1, explanation="é\\" * 3000))
        lines = await d.wait_lines(1)
        await sink.close()
        return lines

    lines = asyncio.run(scenario())
    assert len(lines) == 1
    assert len(lines[0].encode()) <= 2048
    _, _, _, ext = parse(lines[0])  # still well formed: no half character, no dangling escape
    assert ext["externalId"] == "0123456789abcdef" and ext["cs1"] == PROFILE
    assert ext["cs4"].startswith("é\\é\\") and "msg" not in ext


def test_tcp_reconnects_after_the_collector_dies(daemons: Any) -> None:
    d = daemons("tcp")
    sink = SyslogSink(SyslogExporterConfig(host="127.0.0.1", port=d.port, transport="tcp"))

    async def scenario() -> list[str]:
        for seq in range(1, 4):
            await sink.send(alert("opened", seq))
        assert len(await d.wait_lines(3)) == 3
        d.kill()
        await asyncio.sleep(0.3)  # the FIN reaches the sink's connection
        for seq in range(4, 7):  # queued while nobody listens
            await sink.send(alert("opened", seq))
        await asyncio.sleep(1.0)
        assert sink.counts.retried >= 1
        d.start()  # same port, same output file
        for seq in range(7, 10):
            await sink.send(alert("opened", seq))
        lines = await d.wait_lines(9, timeout=20)
        await sink.close()
        return lines

    t0 = time.monotonic()
    lines = asyncio.run(scenario())
    seqs = [int(parse(line)[1]["seq"]) for line in lines]
    # nothing was in flight at the kill, so every event arrives, in order, once
    assert seqs == list(range(1, 10)), seqs
    assert sink.counts.delivered == 9 and sink.counts.dropped == 0 and sink.counts.retried >= 2
    assert time.monotonic() - t0 < 15  # backoff 0.5 s, 1 s, 2 s: not the 30 s cap


def test_full_queue_drops_the_oldest(daemons: Any) -> None:
    d = daemons("tcp", start=False)
    sink = SyslogSink(SyslogExporterConfig(host="127.0.0.1", port=d.port, transport="tcp"), max_queue=5)

    async def scenario() -> list[str]:
        for seq in range(1, 9):  # send() never yields: the sender has not run yet
            await sink.send(alert("opened", seq))
        assert sink.counts.dropped == 3
        d.start()
        lines = await d.wait_lines(5)
        await sink.close()
        return lines

    lines = asyncio.run(scenario())
    assert [int(parse(line)[1]["seq"]) for line in lines] == [4, 5, 6, 7, 8]


def test_tls_refuses_a_collector_it_cannot_verify(daemons: Any, tmp_path: Path) -> None:
    d = daemons("tls", make_ca(tmp_path / "pki"))
    stranger = make_ca(tmp_path / "other", cn="another CA")
    sink = SyslogSink(SyslogExporterConfig(host="127.0.0.1", port=d.port, transport="tls", ca_file=stranger.ca,
                                           server_name="localhost"))

    async def scenario() -> None:
        await sink.send(alert("opened", 1))
        await asyncio.sleep(1.0)
        await sink.close()

    asyncio.run(scenario())
    assert d.lines() == []
    assert sink.counts.delivered == 0 and sink.counts.retried >= 1 and sink.counts.dropped == 1


def test_bad_config_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ca_file .* is not a file"):
        SyslogSink(SyslogExporterConfig(host="h", transport="tls", ca_file=tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="need transport tls"):
        SyslogSink(SyslogExporterConfig(host="h", transport="udp", ca_file=tmp_path / "ca.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="cannot load the TLS files"):
        SyslogSink(SyslogExporterConfig(host="h", transport="tls", ca_file=tmp_path / "junk.pem"))
    assert SyslogSink(SyslogExporterConfig(host="h", transport="tls")).port == 6514
    assert SyslogSink(SyslogExporterConfig(host="h", transport="tcp")).port == 514


# ---- escaping and framing by hand --------------------------------------------------------

def test_escaping_and_framing() -> None:
    assert cef_header_escape("a|b\\c") == "a\\|b\\\\c"
    assert cef_header_escape("two\nlines") == "two lines"
    assert cef_value_escape("a=b\\c|d\ne\rf") == "a\\=b\\\\c|d\\ne\\rf"
    assert sd_escape('say "hi"] \\o/') == 'say \\"hi\\"\\] \\\\o/'
    assert octet_frame(b"<13>1 - - - - - - hi") == b"20 <13>1 - - - - - - hi"
    assert octet_frame("<13>1 - - - - - - é".encode()) == "20 <13>1 - - - - - - é".encode()
    assert truncate_utf8(b"a" * 2047 + "é".encode(), 2048) == b"a" * 2047  # not half a character
    assert truncate_utf8(b"a" * 2046 + b"\\\\x", 2048) == b"a" * 2046 + b"\\\\"  # a whole escape stays
    assert truncate_utf8(b"a" * 2047 + b"\\=", 2048) == b"a" * 2047  # not a dangling one
    assert truncate_utf8(b"short", 2048) == b"short"


def test_a_stream_event_formats_exactly() -> None:
    event = event_from(7, "stream", 'c"]m', TS, {"action": "added", "url": "rtsp://h/a=b", "profile": "bob"})
    sink = SyslogSink(SyslogExporterConfig(host="h", transport="tcp", types=["stream"], min_severity="info"))
    msg = (f'<86>1 2026-05-28T20:26:40.250Z {socket.gethostname()} expose {os.getpid()} stream.added '
           '[expose@32473 seq="7" stream="c\\"\\]m"] '
           f"CEF:0|expose|expose|{__version__}|stream.added|Stream added|1|rt=1780000000250 cat=stream act=added "
           "cs2Label=stream cs2=c\"]m cn1Label=seq cn1=7 cs1Label=claimedProfile cs1=bob request=rtsp://h/a\\=b "
           "msg=stream 'c\"]m': added")
    assert sink.format(event) == f"{len(msg.encode())} {msg}".encode()
