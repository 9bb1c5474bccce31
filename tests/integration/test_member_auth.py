"""The proxy never gives a member's password to a server that merely asks for it.

A fake member on loopback (an impostor at a member's address) answers the proxy's
login by asking for the password in clear text, as md5, or by reporting success right
after the first SCRAM message, before proving it knows the password. The proxy refuses
each, saying why, and no password (nor its md5 hash) reaches the impostor.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from pgshard_proxy.pool.backend import BackendConnection, BackendError, Credentials
from pgshard_proxy.protocol import auth, messages
from tests.support import net

PASSWORD = "member-secret-42"
CLEARTEXT = b"R" + struct.pack("!II", 8, 3)


async def _impostor(answer: bytes, after_sasl: bytes | None, seen: bytearray) -> asyncio.Server:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (n,) = struct.unpack("!I", await reader.readexactly(4))
            body = await reader.readexactly(n - 4)
            if struct.unpack("!I", body[:4])[0] == 80877103:  # SSLRequest: no TLS here
                writer.write(b"N")
                (n,) = struct.unpack("!I", await reader.readexactly(4))
                await reader.readexactly(n - 4)
            writer.write(answer)
            await writer.drain()
            if after_sasl is not None:
                head = await reader.readexactly(5)
                rest = await reader.readexactly(struct.unpack("!I", head[1:])[0] - 4)
                seen.extend(head + rest)
                writer.write(after_sasl)
                await writer.drain()
            async with asyncio.timeout(2):
                while data := await reader.read(65536):
                    seen.extend(data)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    host = net.random_loopback()
    return await asyncio.start_server(serve, host, net.free_port(host))


@pytest.mark.parametrize(
    ("answer", "after_sasl", "message"),
    [
        (CLEARTEXT, None, "password in clear text"),
        (messages.auth_md5(b"salt"), None, "password as an md5 hash"),
        (
            messages.auth_sasl([auth.SCRAM_MECHANISM]),
            messages.auth_ok() + messages.ready_for_query(messages.TxStatus.IDLE),
            "success before proving it knows the password",
        ),
    ],
    ids=["cleartext", "md5", "ok-before-scram-proof"],
)
async def test_a_member_asking_for_the_password_gets_nothing(
    answer: bytes, after_sasl: bytes | None, message: str
) -> None:
    seen = bytearray()
    server = await _impostor(answer, after_sasl, seen)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        with pytest.raises(BackendError, match=message):
            await BackendConnection.connect(
                member_name="s0m0",
                address=f"{host}:{port}",
                database="app",
                credentials=Credentials.from_dsn(f"postgresql://app:{PASSWORD}@{host}:{port}/app"),
                timeout=5,
            )
    finally:
        server.close()
        await server.wait_closed()
    md5 = auth.md5_password("app", PASSWORD, b"salt").encode()
    assert PASSWORD.encode() not in seen and md5 not in seen
