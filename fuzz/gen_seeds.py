#!/usr/bin/env python3
"""Write the seed corpora of the fuzz harnesses (fuzz/corpus/<harness>/).

    python3 fuzz/gen_seeds.py        # rewrites fuzz/corpus/ from the lists below

Seeds are small: valid frames of every op (docs/PROTOCOL.md examples), several
frames in one stream, and malformed ones that reach each check of packet.c; for
the API body, valid and invalid register bodies and an apps.json-like file.
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


if __name__ == "__main__":
    main()
