#!/usr/bin/env python3
"""Write the seed corpora of the fuzz harnesses (fuzz/corpus/<harness>/).

    python3 fuzz/gen_seeds.py        # rewrites fuzz/corpus/ from the lists below

Seeds are small: valid frames of every op (docs/PROTOCOL.md examples), several
frames in one stream, and malformed ones that reach each check of packet.c; for
the API body, valid and invalid register bodies, an apps.json-like file and
token scopes (POST /tokens); for the web front's head parser, accepted heads and
one of each refusal.
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
    "data_conn_max": frame('{"op":7,"conn":9007199254740991,"len":1}', b"x"),
    "data_jansson_order": frame('{"conn":2,"len":1,"op":7}', b"y"),
    "udp_data_empty": frame('{"op":12,"session":3,"len":0}'),
    "ack": frame({"op": 8, "conn": 1, "bytes": 21}),
    "shutdown": frame({"op": 9, "conn": 1}),
    "close": frame({"op": 10, "conn": 1, "reason": "done"}),
    "close_noreason": frame({"op": 10, "conn": 2}),
    "hello_v2_resume": frame({"op": 1, "version": 1, "max_version": 2, "token": "t", "name": "h",
                              "window": 65536, "resume_grace": 60,
                              "resume": {"session": "0" * 32, "token": "a" * 64}}),
    "welcome_v2": frame({"op": 2, "version": 2, "window": 65536, "heartbeat": 5,
                         "session": "0123456789abcdef" * 2, "resume_token": "f" * 64,
                         "resume_grace": 60, "resumed": True}),
    "ack_total": frame({"op": 8, "conn": 1, "bytes": 21, "total": 4096}),
    "resume": frame({"op": 11, "conns": [[1, 4096, 4000, 3], [2, 0, 0, 0]], "last": True}),
    "resume_empty": frame({"op": 11, "conns": [], "last": False}),
    "udp_open": frame({"op": 12, "session": 1, "len": 5,
                       "open": {"app": "dns", "target_host": "127.0.0.1", "target_port": 53,
                                "idle": 120}}, b"hello"),
    "udp_data": frame({"op": 12, "session": 7, "len": 3}, b"abc"),
    "udp_empty": frame({"op": 12, "session": 7, "len": 0}),
    "udp_drops": frame({"op": 12, "session": 7, "len": 1,
                        "drops": {"queue_full": 3, "oversize": 1, "tunnel_down": 2}}, b"x"),
    "udp_close": frame({"op": 13, "session": 7, "reason": "idle"}),
    "apps": frame({"op": 18, "unregister": ["old"],
                   "register": [{"name": "w", "public_port": 80, "target_host": "127.0.0.1",
                                 "target_port": 8080, "protocol": "tcp"}]}),
    "nodes": frame({"op": 20, "nodes": [{"name": "n1", "address": "192.0.2.1:6300"},
                                        {"name": "n2", "address": "[2001:db8::2]:6300"}]}),
    "welcome_node": frame({"op": 2, "version": 7, "window": 4194304, "heartbeat": 5,
                           "node": "n1"}),
    "apps_result": frame({"op": 19, "apps": [{"name": "w", "ok": False, "error": "port taken"}]}),
    "hello_udp": frame({"op": 1, "version": 1, "max_version": 3, "token": "t", "name": "h",
                        "window": 65536, "udp_apps": [{"name": "dns", "public_port": 5353,
                                                       "target_host": "127.0.0.1",
                                                       "target_port": 53, "protocol": "udp",
                                                       "udp_idle_timeout": 30}]}),
    "hello_ftp": frame({"op": 1, "version": 1, "max_version": 5, "token": "t", "name": "h",
                        "window": 65536, "ftp_apps": [{"name": "nas", "public_port": 2121,
                                                       "target_host": "192.0.2.5",
                                                       "target_port": 21, "protocol": "ftp",
                                                       "ftp_passive_ports": "40000-40099"}]}),
    "build_ftp_control": frame({"op": 5, "conn": 3, "app": "nas", "target_host": "192.0.2.5",
                                "target_port": 21, "ftp": "control"}),
    "build_ftp_data": frame({"op": 5, "conn": 4, "app": "nas", "target_host": "192.0.2.5",
                             "target_port": 40001, "ftp": "data", "ftp_ctl": 3, "ftp_req": 1}),
    "ftp_open_passive": frame({"op": 14, "conn": 3, "req": 1, "mode": "passive", "port": 40001}),
    "ftp_open_active": frame({"op": 14, "conn": 3, "req": 2, "mode": "active", "port": 40002,
                              "host": "2001:db8::7"}),
    "ftp_opened": frame({"op": 15, "conn": 3, "req": 1, "ok": True, "host": "203.0.113.10",
                         "port": 30001}),
    "ftp_refused": frame({"op": 15, "conn": 3, "req": 2, "ok": False, "code": 500,
                          "reason": "the address must be your own"}),
    "ftp_connect": frame({"op": 16, "conn": 3, "req": 2, "host": "203.0.113.7", "port": 40002}),
    "ftp_tls": frame({"op": 17, "conn": 3}),
    # Version 6: client addresses, PROXY protocol, source allowlists.
    "build_v6_pp": frame({"op": 5, "conn": 5, "app": "web", "target_host": "127.0.0.1",
                          "target_port": 8443, "client": "[2001:db8::1]:56324",
                          "server": "192.0.2.1:443", "proxy_protocol": 2}),
    "build_v6_plain": frame({"op": 5, "conn": 6, "app": "web", "target_host": "::1",
                             "target_port": 80, "client": "192.0.2.7:5000",
                             "server": "[2001:db8::2]:8080"}),
    "hello_v6_apps": frame({"op": 1, "version": 1, "max_version": 6, "token": "t", "name": "h",
                            "window": 65536, "apps": [{"name": "web", "public_port": 443,
                                                       "target_host": "127.0.0.1",
                                                       "target_port": 8443, "proxy_protocol": 1,
                                                       "allow_from": ["192.0.2.0/24",
                                                                      "2001:db8::/32"]}]}),
    "hello_allow": frame({"op": 1, "version": 1, "max_version": 6, "token": "t", "name": "h",
                          "window": 65536, "allow": ["127.0.0.0/8:1-65535", "::1/128:1-65535",
                                                     "[2001:db8::5]:443", "nas.lan:22", "any"]}),
    "apps_allow": frame({"op": 18, "unregister": [], "register": [],
                         "allow": ["192.0.2.0/24:1-65535"]}),
}
MALFORMED = {
    "len0": raw(0),
    "len_huge": raw(0xFFFFFFFF, b"{}"),
    "len_over": raw(65537, b"{"),
    "len_preauth_over": raw(16385, b"{\"op\":4}"),
    "dup": frame('{"op":4,"op":4}'),
    "trailing": frame('{"op":4}x'),
    "array": frame('[{"op":4}]'),
    "unknown_op": frame({"op": 14}),
    "udp_too_big": frame({"op": 12, "session": 1, "len": 65536}),
    "udp_short": frame({"op": 12, "session": 1, "len": 100}, b"short"),
    "udp_open_bad": frame({"op": 12, "session": 1, "len": 0, "open": {"app": "x"}}),
    "udp_drops_bad": frame({"op": 13, "session": 1, "drops": {"lost": 1}}),
    "resume_bad_entry": frame({"op": 11, "conns": [[1, 2, 3]], "last": True}),
    "resume_no_last": frame({"op": 11, "conns": []}),
    "op_string": frame({"op": "4"}),
    "data_len0": frame({"op": 7, "conn": 1, "len": 0}),
    "data_lead0": frame('{"op":7,"conn":01,"len":1}', b"x"),
    "data_conn_over": frame('{"op":7,"conn":9007199254740992,"len":1}', b"x"),
    "udp_data_len00": frame('{"op":12,"session":3,"len":00}'),
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
    "register_allow_pp": {"name": "web", "public_port": 443, "target_host": "127.0.0.1",
                          "target_port": 8443, "proxy_protocol": 2,
                          "allow_from": ["192.0.2.0/24", "2001:db8::/32", "127.0.0.2"]},
    # POST /tokens (token_scope_from_json).
    "token_scope": {"label": "alice", "privates": ["alice", "bob-*"],
                    "ports": "20000-20099,30000", "max_apps": 5, "max_conns": 200},
    "token_scope_any": {"label": "x", "privates": ["*"], "ports": "1"},
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
    # Nesting: WEB_MAX_JSON_DEPTH (32) levels pass the bound, 33 do not; brackets
    # inside strings (escaped quotes included) do not count.
    "deep_at_limit": b'{"name":' + b"[" * 31 + b"]" * 31 + b"}",
    "deep_over": b'{"name":' + b"[" * 32 + b"]" * 32 + b"}",
    "deep_in_string": b'{"name":"\\\"' + b"[" * 3000 + b'","public_port":1}',
    "deep_objects": b'{"a":' * 40 + b"1" + b"}" * 40,
    "allow_host_bits": b'{"name":"a","public_port":1,"target_host":"h","target_port":1,'
                       b'"allow_from":["192.0.2.1/24"]}',
    "allow_65": ('{"name":"a","public_port":1,"target_host":"h","target_port":1,"allow_from":[%s]}'
                 % ",".join('"10.0.%d.0/24"' % i for i in range(65))).encode(),
    "pp_udp": b'{"name":"a","public_port":1,"target_host":"h","target_port":1,'
              b'"protocol":"udp","proxy_protocol":1}',
}

# fuzz_web_head: request heads as the web front reads them (web_head.c).
HEAD_SEEDS = {
    "get_list": b"GET /list HTTP/1.1\r\nHost: 127.0.0.1:6301\r\nAuthorization: Bearer 0123abcd\r\n"
                b"Accept: */*\r\n\r\n",
    "head_page": b"HEAD / HTTP/1.0\r\n\r\n",
    "post_body": b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 78\r\n\r\n"
                 b'{"name":"ssh","public_port":2222,"target_host":"127.0.0.1","target_port":22}',
    "post_expect": b"POST /unregister HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 14\r\n\r\n",
    "post_no_length": b"POST /register HTTP/1.1\r\nHost: x\r\n\r\n",
    "chunked": b"POST /register HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te_and_cl": b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
    "two_lengths": b"POST / HTTP/1.1\r\nContent-Length: 4\r\ncontent-length: 5\r\n\r\n",
    "length_list": b"POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n",
    "length_huge": b"POST / HTTP/1.1\r\nContent-Length: 184467440737095516160\r\n\r\n",
    "length_over": b"POST / HTTP/1.1\r\nContent-Length: 16385\r\n\r\n",
    "bare_lf": b"GET / HTTP/1.1\nHost: x\n\n",
    "bare_cr": b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
    "folded": b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n",
    "space_colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "http2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "incomplete": b"GET /list HTTP/1.1\r\nAuthorization: Bearer ",
    "many_fields": b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(65)) + b"\r\n",
    "big_head": b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 8200 + b"\r\n\r\n",
}

# fuzz_ftp: the first byte picks the direction (even: server replies, odd:
# client commands) and the read size; the rest is the control stream.
FTP_SEEDS = {
    "replies": b"\x0e220 Welcome\r\n230 Login successful.\r\n"
               b"227 Entering Passive Mode (192,0,2,2,156,64).\r\n"
               b"229 Entering Extended Passive Mode (|||40001|)\r\n150 ok\r\n226 done\r\n",
    "multiline": b"\x04211-Features:\r\n EPSV\r\n 227 (1,2,3,4,5,6)\r\n211 End\r\n"
                 b"227-Entering Passive Mode (192,0,2,2,4,2)\r\n227 OK\r\n",
    "bad_replies": b"\x02227 Entering Passive Mode\r\n227 (1,2,3)\r\n229 (|||0|)\r\n"
                   b"229 (||1|)\n229 (|||65536|)\r\n",
    "commands": b"\x0bUSER anonymous\r\nPASS x\r\nport 203,0,113,7,156,65\r\n"
                b"EPRT |1|203.0.113.7|40002|\r\neprt |2|2001:db8::7|40003|\nRETR f\r\n"
                b"AUTH TLS\r\n",
    "bad_commands": b"\x01PORT 1,2,3,4,5\r\nPORT 1,2,3,256,1,1\r\nEPRT |3|1.2.3.4|5|\r\n"
                    b"EPRT |1|::1|5|\r\nPORT 1,2,3,4,0,0\r\n",
    "long_reply": b"\x40227 " + b"a" * 2100 + b"\r\n227 (1,2,3,4,0,99)\r\n",
    "auth": b"\x03AUTH TLS\r\n\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}

# fuzz_cluster: first byte even, a node entry as Redis holds it; odd, a
# --cluster URL.
_NODE = {"name": "n1", "address": "127.0.0.11:6300", "fingerprint": "AB:CD", "instance": "00ff",
         "up_since": 1700000000, "tunnels": 1, "connections": 2, "privates": ["home"],
         "apps": {"web": [1, 5, 100, 2000]}}
CLUSTER_SEEDS = {
    "node": b"\x00" + json.dumps(_NODE).encode(),
    "node_v6": b"\x00" + json.dumps(dict(_NODE, address="[2001:db8::1]:6300")).encode(),
    "node_bad_app": b"\x00" + json.dumps(dict(_NODE, apps={"web": [1, 2, 3]})).encode(),
    "node_deep": b"\x00" + b"[" * 3000 + b"]" * 3000,
    "url_redis": b"\x01redis://127.0.0.1:6379/0",
    "url_auth": b"\x01redis://natproxy:s3cretpassword@[::1]:6379/2",
    "url_sentinel": b"\x01sentinel://:pw@127.0.0.1:26379,127.0.0.2:26379/mymaster/1",
    "url_bad": b"\x01redis://host",
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
    write("fuzz_web_head", HEAD_SEEDS)
    write("fuzz_ftp", FTP_SEEDS)
    write("fuzz_cluster", CLUSTER_SEEDS)


if __name__ == "__main__":
    main()
