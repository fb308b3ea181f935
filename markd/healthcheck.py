"""Health probe for a running markd: one real `hello` over the wire.

    python -m markd.healthcheck [--host 127.0.0.1] [--port 27020] [--socket PATH] [--timeout 5]
                                [--tls [--tlsCAFile CA] [--tlsCertificateKeyFile PEM] [--tlsAllowInvalidCertificates]]

Exit status 0 only when the reply is an OP_MSG answering our request with `ok: 1` and
`iscryptd: true`; 1 otherwise (Docker's HEALTHCHECK reads 0 as healthy and 1 as unhealthy).
Standard library plus `bson` and markd's own sans-IO framing: no MongoClient, no server
selection, no monitoring threads, so it is cheap enough to run every few seconds.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys

from bson.errors import InvalidBSON

from markd.wire import FrameReader, OpMsg, ProtocolError, encode_op_msg, parse_message

HEALTHY = 0
UNHEALTHY = 1
_HEADER_RESPONSE_TO = slice(8, 12)


class Unhealthy(Exception):
    """The daemon did not answer `hello` as a mongocryptd must."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m markd.healthcheck",
                                     description="Exit 0 if markd answers hello with ok:1 and iscryptd:true.")
    parser.add_argument("--host", default=os.environ.get("MARKD_HEALTHCHECK_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("MARKD_HEALTHCHECK_PORT", "27020")))
    parser.add_argument("--socket", dest="socket_path", help="connect to this Unix socket instead of host:port")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds for connect + reply [5]")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (markd --tlsMode requireTLS)")
    parser.add_argument("--tlsCAFile", dest="tls_ca_file", help="CA bundle to verify markd's certificate")
    parser.add_argument("--tlsCertificateKeyFile", dest="tls_cert_key_file", help="client certificate + key PEM")
    parser.add_argument("--tlsAllowInvalidCertificates", dest="tls_insecure", action="store_true",
                        help="do not verify markd's certificate or host name")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    return parser


def _connect(args: argparse.Namespace) -> socket.socket:
    if args.socket_path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(args.timeout)
        try:
            sock.connect(args.socket_path)
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    sock.settimeout(args.timeout)
    if not (args.tls or args.tls_ca_file or args.tls_cert_key_file or args.tls_insecure):
        return sock
    context = ssl.create_default_context(cafile=args.tls_ca_file)
    if args.tls_cert_key_file:
        context.load_cert_chain(args.tls_cert_key_file)
    if args.tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    server_name = None if args.socket_path else args.host
    try:
        return context.wrap_socket(sock, server_hostname=server_name)
    except BaseException:
        sock.close()
        raise


def _read_frame(sock: socket.socket) -> bytes:
    reader = FrameReader()
    while True:
        data = sock.recv(65536)
        if not data:
            raise Unhealthy("connection closed before a whole reply arrived")
        frames = reader.feed(data)
        if frames:
            return frames[0]


def probe(args: argparse.Namespace) -> dict[str, object]:
    """Send `hello` and return the reply document; Unhealthy/OSError if it is not a cryptd's."""
    request_id = int.from_bytes(os.urandom(3), "little") + 1
    frame = encode_op_msg(0, {"hello": 1, "$db": "admin"}, request_id=request_id)
    with _connect(args) as sock:
        sock.sendall(frame)
        reply_frame = _read_frame(sock)
    try:
        message = parse_message(reply_frame)
    except ProtocolError as exc:
        raise Unhealthy(f"unreadable reply: {exc}") from exc
    if not isinstance(message, OpMsg) or message.error is not None:
        raise Unhealthy("reply is not a well-formed OP_MSG")
    if int.from_bytes(reply_frame[_HEADER_RESPONSE_TO], "little", signed=True) != request_id:
        raise Unhealthy("reply does not answer our request (responseTo mismatch)")
    reply = message.command
    if reply.get("ok") != 1:
        raise Unhealthy(f"hello failed: {reply.get('errmsg', reply)}")
    if reply.get("iscryptd") is not True:
        raise Unhealthy("the server is not a mongocryptd (iscryptd is not true)")
    return reply


def answers_as_cryptd(host: str = "127.0.0.1", port: int = 27020, socket_path: str | None = None,
                      timeout: float = 5.0, tls: bool = False) -> bool:
    """Whether whoever listens there answers `hello` with `iscryptd: true` (markd's test of a busy port).
    With `tls`, the peer's certificate is not checked: only its answer is wanted, and nothing is sent but hello."""
    args = argparse.Namespace(host=host, port=port, socket_path=socket_path, timeout=timeout, tls=tls,
                              tls_ca_file=None, tls_cert_key_file=None, tls_insecure=tls)
    try:
        probe(args)
    except (OSError, Unhealthy, InvalidBSON, ValueError):
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    target = args.socket_path or f"{args.host}:{args.port}"
    try:
        reply = probe(args)
    except (OSError, Unhealthy, InvalidBSON) as exc:
        if not args.quiet:
            print(f"markd at {target}: UNHEALTHY: {type(exc).__name__}: {exc}", file=sys.stderr)
        return UNHEALTHY
    if not args.quiet:
        print(f"markd at {target}: ok (maxWireVersion {reply.get('maxWireVersion')})")
    return HEALTHY


if __name__ == "__main__":
    sys.exit(main())
