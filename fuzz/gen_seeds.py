#!/usr/bin/env python3
"""Write the seed corpora of the fuzz harnesses (fuzz/corpus/<harness>/).

    python3 fuzz/gen_seeds.py        # rewrites fuzz/corpus/ from the lists below

Seeds are small: valid frames of every op (docs/PROTOCOL.md examples), several
frames in one stream, and malformed ones that reach each check of packet.c; for
the API body, valid and invalid register bodies and an apps.json-like file; for
the TLS records, scripts (see fuzz/fuzz_tls_records.c) that seal data with each
cipher suite, KeyUpdate, alerts, handshake messages, padding, raw, flipped and
cut records.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def frame(hdr, payload=b""):
    if isinstance(hdr, (dict, list)):
        hdr = json.dumps(hdr, separators=(",", ":"))
    if isinstance(hdr, str):
        hdr = hdr.encode()
    return struct.pack(">I", len(hdr)) + hdr + payload


def raw(prefix, body=b""):
    return struct.pack(">I", prefix) + body


HELLO = {"op": 1, "version": 1, "token": "0123abcd", "name": "home", "window": 1048576,
         "apps": [{"name": "ssh", "public_port": 2222, "target_host": "127.0.0.1",
                   "target_port": 22}]}
WELCOME = {"op": 2, "version": 1, "window": 1048576, "heartbeat": 5,
           "apps": [{"name": "ssh", "ok": True}, {"name": "web", "ok": False,
                                                   "error": "port in use"}]}
VALID = {
    "hello": frame(HELLO),
    "hello_noapps": frame({"op": 1, "version": 1, "token": "t", "name": "h", "window": 65536}),
    "welcome": frame(WELCOME),
    "error": frame({"op": 3, "code": "bad_token", "message": "wrong token"}),
    "ping": frame({"op": 4}),
    "build": frame({"op": 5, "conn": 1, "app": "ssh", "target_host": "::1", "target_port": 22}),
    "connected": frame({"op": 6, "conn": 9007199254740991}),
    "data": frame({"op": 7, "conn": 1, "len": 21}, b"abcdefghijklmnopqrstu"),
    "data_bin": frame({"op": 7, "conn": 3, "len": 4}, b"\x00\xff\x00\x04"),
    "ack": frame({"op": 8, "conn": 1, "bytes": 21}),
    "shutdown": frame({"op": 9, "conn": 1}),
    "close": frame({"op": 10, "conn": 1, "reason": "done"}),
    "close_noreason": frame({"op": 10, "conn": 2}),
}
MALFORMED = {
    "len0": raw(0),
    "len_huge": raw(0xFFFFFFFF, b"{}"),
    "len_over": raw(65537, b"{"),
    "len_preauth_over": raw(16385, b"{\"op\":4}"),
    "dup": frame('{"op":4,"op":4}'),
    "trailing": frame('{"op":4}x'),
    "array": frame('[{"op":4}]'),
    "unknown_op": frame({"op": 11}),
    "op_string": frame({"op": "4"}),
    "data_len0": frame({"op": 7, "conn": 1, "len": 0}),
    "data_len_big": frame({"op": 7, "conn": 1, "len": 262145}),
    "data_short": frame({"op": 7, "conn": 1, "len": 100}, b"short"),
    "conn0": frame({"op": 6, "conn": 0}),
    "conn_2p53": frame({"op": 6, "conn": 9007199254740992}),
    "bad_name": frame({"op": 5, "conn": 1, "app": "a b", "target_host": "h", "target_port": 1}),
    "bad_host": frame({"op": 5, "conn": 1, "app": "a", "target_host": "a/b", "target_port": 1}),
    "nul_string": frame('{"op":3,"code":"a\\u0000","message":"m"}'),
    "deep": frame('{"op":4,"x":' + "[" * 3000 + "]" * 3000 + "}"),
    "truncated_hdr": frame(HELLO)[:40],
}
STREAMS = {
    "stream_session": b"".join(VALID[k] for k in
                               ("hello", "welcome", "build", "connected", "data", "ack", "data_bin",
                                "shutdown", "ping", "close")),
    "stream_then_garbage": VALID["ping"] + VALID["data"] + b"\x00\x00\x00\x03{}}",
}

BODY_VALID = {
    "register": {"name": "ssh", "public_port": 2222, "target_host": "127.0.0.1",
                 "target_port": 22},
    "register_private": {"name": "web", "public_port": 8080, "target_host": "::1",
                         "target_port": 80, "private": "home"},
    "register_private_null": {"name": "a.b_c-d", "public_port": 1, "target_host": "h",
                              "target_port": 65535, "private": None},
    "apps_json": {"apps": [{"name": "ssh", "public_port": 2222, "target_host": "127.0.0.1",
                            "target_port": 22, "private": "home"},
                           {"name": "x", "public_port": 3, "target_host": "x", "target_port": 4,
                            "private": "p"}]},
    "unregister": {"name": "ssh"},
}
BODY_INVALID = {
    "empty": b"",
    "array": b"[]",
    "dup": b'{"name":"a","name":"b","public_port":1,"target_host":"h","target_port":1}',
    "port0": b'{"name":"a","public_port":0,"target_host":"h","target_port":1}',
    "port_str": b'{"name":"a","public_port":"1","target_host":"h","target_port":1}',
    "name_space": b'{"name":"a b","public_port":1,"target_host":"h","target_port":1}',
    "host_long": ('{"name":"a","public_port":1,"target_host":"%s","target_port":1}'
                  % ("h" * 254)).encode(),
    "private_bad": b'{"name":"a","public_port":1,"target_host":"h","target_port":1,"private":7}',
    "nul": b'{"name":"a\\u0000b","public_port":1,"target_host":"h","target_port":1}',
    "truncated": b'{"name":"a","public_port":1,"target_h',
}

# fuzz_tls_records: scripts (see fuzz/fuzz_tls_records.c). Header: mode byte
# (suite 0..2, +4 socketpair/recv, +8 lazy), caller buffer size - 1 (16 bits).
def tls(mode, buflen, *ops):
    return bytes([mode]) + struct.pack(">H", buflen - 1) + b"".join(ops)


def t_seal(n, split=0x00):
    return bytes([0]) + struct.pack(">HB", n, split)


def t_raw(data):
    return bytes([1]) + struct.pack(">H", len(data)) + data


def t_flip(n, pos, bit):
    return bytes([2]) + struct.pack(">HHB", n, pos, bit)


def t_trunc(n, cut):
    return bytes([3]) + struct.pack(">HH", n, cut)


def t_rekey(side, every):
    return bytes([4, side | (every - 1) << 1])


def t_type(typ, msg, zeros=0, count=1):
    return (bytes([5, typ]) + struct.pack(">HH", count - 1, len(msg)) + msg +
            struct.pack(">H", zeros))


def t_buflen(n):
    return bytes([6]) + struct.pack(">H", n - 1)


def t_reverse(n):
    return bytes([7]) + struct.pack(">H", n)


def t_piece(n):
    return bytes([8]) + struct.pack(">H", n)


KEY_UPDATE = b"\x18\x00\x00\x01"
TICKET = b"\x04\x00\x00\x08" + b"\x00\x00\x0e\x10" + b"\x01\x02\x03\x04"
TLS_SEEDS = {
    "aes128_small": tls(0, 65536, t_seal(100), t_seal(0), t_seal(1, 0x37)),
    "aes256_multi": tls(1, 65536, t_seal(40000, 0x8f), t_seal(16384)),
    "chacha_bigbuf": tls(2, 20000, t_seal(16384), t_seal(16385, 0xf1)),
    "buf1": tls(0, 1, t_seal(300), t_seal(17000)),
    "buf_just_under": tls(1, 16383, t_seal(16384), t_buflen(16384), t_seal(16384)),
    "recv_mode": tls(4, 4096, t_seal(50000, 0x44), t_seal(10)),
    "recv_lazy_pieces": tls(4 | 8 | 2, 100, t_piece(7), t_seal(3000), t_piece(0), t_seal(20000)),
    "recv_lazy_fill": tls(4 | 8, 100, t_piece(1000), *[t_seal(60000, 0x21)] * 9),
    "lazy_pieces": tls(8, 10, t_piece(1), t_seal(200), t_piece(4096), t_seal(33000)),
    "rekey_tx": tls(0, 65536, t_rekey(0, 1), t_seal(60000), t_seal(5), t_seal(5)),
    "rekey_both_reverse": tls(2, 5000, t_rekey(0, 2), t_rekey(1, 1), t_seal(40000),
                              t_reverse(40000), t_seal(100), t_reverse(1), t_seal(1)),
    "close_notify": tls(0, 65536, t_seal(10), t_type(21, b"\x01\x00"), t_seal(10)),
    "alert_fatal": tls(1, 64, t_seal(1000), t_type(21, b"\x02\x28"), t_seal(10)),
    "alert_long": tls(0, 64, t_type(21, b"\x02\x28\x00")),
    "ticket": tls(0, 65536, t_type(22, TICKET), t_seal(10)),
    "key_update_hooked": tls(2, 65536, t_seal(5), t_type(22, KEY_UPDATE + b"\x01"), t_seal(5)),
    "key_update_then_ticket": tls(0, 65536, t_type(22, KEY_UPDATE + b"\x00" + TICKET)),
    "key_update_bad": tls(0, 65536, t_type(22, KEY_UPDATE + b"\x02")),
    "handshake_other": tls(0, 65536, t_type(22, b"\x0d\x00\x00\x00")),
    "handshake_short": tls(0, 65536, t_type(22, b"\x04\x00\x00\x09\x00")),
    "padded_data": tls(1, 3, t_type(0, b"hello\x17", 300), t_seal(20)),
    "empty_padded_buf1": tls(0, 1, t_type(0, b"\x17", 1), t_type(0, b"\x17", 30), t_seal(3)),
    "empty_padded_many": tls(0, 1, t_type(0, b"\x17", 1, 4096), t_seal(3)),
    "ticket_many": tls(2, 100, t_type(22, TICKET, 0, 3000), t_seal(300)),
    "all_padding": tls(0, 65536, t_type(0, b"", 100)),
    "content_too_big": tls(2, 65536, t_type(23, b"x", 16384)),
    "content_max_padded": tls(0, 65536, t_type(0, b"\x17", 16384 + 200)),
    "unknown_type": tls(0, 65536, t_type(20, b"\x01")),
    "raw_bad_header": tls(0, 65536, t_seal(10), t_raw(b"\x16\x03\x03\x00\x20" + b"\x00" * 32)),
    "raw_huge_length": tls(0, 65536, t_raw(b"\x17\x03\x03\xff\xff")),
    "raw_short_length": tls(0, 65536, t_raw(b"\x17\x03\x03\x00\x10" + b"\x00" * 16)),
    "raw_truncated_header": tls(0, 65536, t_raw(b"\x17\x03"), t_seal(10)),
    "raw_forged": tls(0, 65536, t_raw(b"\x17\x03\x03\x00\x20" + bytes(range(32)))),
    "flip_tag": tls(0, 65536, t_seal(100), t_flip(100, 121, 3), t_seal(10)),
    "flip_header": tls(1, 65536, t_flip(100, 3, 0)),
    "flip_second_record": tls(2, 512, t_seal(30000), t_flip(30000, 17000, 7), t_seal(10)),
    "trunc_then_more": tls(0, 65536, t_trunc(5000, 2000), t_seal(10)),
    "trunc_record_boundary": tls(1, 65536, t_trunc(20000, 16384 + 22), t_seal(10)),
}


def write(dirname, items):
    d = os.path.join(HERE, "corpus", dirname)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    for name, data in items.items():
        if isinstance(data, (dict, list)):
            data = json.dumps(data, separators=(",", ":")).encode()
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def main():
    pk = {}
    pk.update(VALID)
    pk.update(MALFORMED)
    pk.update(STREAMS)
    write("fuzz_packet", pk)
    body = {}
    body.update(BODY_VALID)
    body.update(BODY_INVALID)
    write("fuzz_api_body", body)
    write("fuzz_tls_records", TLS_SEEDS)


if __name__ == "__main__":
    main()
