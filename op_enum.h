#ifndef OP_ENUM_H
#define OP_ENUM_H

/* Operation codes carried in the "op" member of every frame header.
 * One line each: code, name, description. docs/PROTOCOL.md has the members. */
#define OP_LIST(X)                                                                  \
    X(1, HELLO, "private -> public: version, token, name, window, apps to register") \
    X(2, WELCOME, "public -> private: handshake accepted, window, heartbeat, results") \
    X(3, ERROR, "either: fatal error with code and message; sender closes after it")  \
    X(4, PING, "either: heartbeat, sent every few seconds when the tunnel is up")     \
    X(5, BUILD_CONNECTION, "public -> private: dial target_host:target_port for conn") \
    X(6, CONNECTED, "private -> public: the target answered, relay may start")       \
    X(7, DATA, "either: len raw payload bytes of conn follow the header")            \
    X(8, ACK, "either: bytes of conn were delivered; reopens the sender's window")    \
    X(9, SHUTDOWN, "either: the sender's socket reached end of stream (half-close)")  \
    X(10, CLOSE, "either: the sender dropped conn; reason says why")               \
    X(11, RESUME, "either (v2): after a resumed handshake, what the sender holds of each conn") \
    X(12, UDP_DATA, "either (v3): one whole datagram of a UDP session; len payload bytes follow") \
    X(13, UDP_CLOSE, "either (v3): the sender ended a UDP session; reason says why") \
    X(14, FTP_OPEN, "private -> public (v5): a data connection for FTP control conn: passive or active") \
    X(15, FTP_OPENED, "public -> private (v5): the answer to FTP_OPEN: ok, the data port, or why not") \
    X(16, FTP_CONNECT, "private -> public (v5): active mode: the server connected; dial the client") \
    X(17, FTP_TLS, "private -> public (v5): FTP control conn switched to TLS (AUTH TLS)") \
    X(18, APPS, "private -> public (v4): unregister and register apps on the running tunnel") \
    X(19, APPS_RESULT, "public -> private (v4): what became of each app of an APPS") \
    X(20, NODES, "public -> private (v7): the live public nodes of a cluster, to tunnel to each")

enum op_code {
#define OP_ENUM_ITEM(code, name, desc) OP_##name = code,
    OP_LIST(OP_ENUM_ITEM)
#undef OP_ENUM_ITEM
    OP_MAX_CODE = 20
};

/* Name and description of an op code, or NULL for an unknown code. */
const char *op_name(int op);
const char *op_description(int op);

#endif
