#ifndef KILN_MHD_SHIM_H
#define KILN_MHD_SHIM_H

#include <errno.h>
#include <netdb.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>
#include <microhttpd.h>

static inline int kiln_hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/// libmicrohttpd's percent-decoding of the path and of query keys and values, except
/// that `%00` stays the three characters: the access handler gets the path as a C string,
/// where a decoded NUL would silently end it (`/v1/workloads/%00` would become the list).
static inline size_t kiln_mhd_unescape(void *cls, struct MHD_Connection *connection, char *val) {
    (void)cls;
    (void)connection;
    char *r = val;
    char *w = val;
    while (*r != '\0') {
        if (*r == '%') {
            int hi = kiln_hex_digit(r[1]);
            int lo = hi < 0 ? -1 : kiln_hex_digit(r[2]);
            if (hi >= 0 && lo >= 0 && (hi | lo) != 0) {
                *w++ = (char)(hi * 16 + lo);
                r += 3;
                continue;
            }
        }
        *w++ = *r++;
    }
    *w = '\0';
    return (size_t)(w - val);
}

/// Whether a header that libmicrohttpd parsed came from one line, unfolded. 0.9.75 parses
/// `Name: value` in place into `Name\0 value`, so the value starts right after the name's
/// NUL and optional blanks. An obs-fold continuation line (leading blanks) is glued onto
/// the header's *name* instead of its value (`Content-Length: 2` + ` x` becomes a header
/// `Content-Lengthx: 2`), which moves or overwrites the name: then the value no longer
/// follows it. RFC 9112 section 5.2 lets a server refuse obs-fold with 400.
static inline int kiln_mhd_header_is_unfolded(const char *key, const char *value) {
    if (key == NULL || value == NULL) return 1;
    const char *p = key + strlen(key) + 1;
    if (value < p || value - p > 4096) return 0;
    for (; p < value; p++) {
        if (*p != ' ' && *p != '\t') return 0;
    }
    return 1;
}

/// The socket of a connection (MHD_get_connection_info is variadic), or -1.
// libmicrohttpd (0.9.7x) finds the query before the URI log callback and, right after it,
// splits the query into GET arguments inside the connection's memory pool: about 58 short
// arguments exhaust Kiln's 4 KiB pool, and such a request then got no answer at all (held
// 30 s, then closed). Kiln parses the request target itself, from the copy the callback
// takes, and never reads libmicrohttpd's GET arguments; so the callback empties the query in
// libmicrohttpd's buffer (the first byte after '?' becomes NUL) and there is nothing to split.
static inline void kiln_mhd_forget_query(const char *uri) {
    char *query = strchr((char *)uri, '?');
    if (query != NULL) query[1] = '\0';
}

static inline int kiln_mhd_connection_fd(struct MHD_Connection *connection) {
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    return info ? info->connect_fd : -1;
}

/// Binds and listens on host:port (IPv4 or IPv6 literal or name). Returns the
/// socket, or -errno. `*bound_port` receives the port actually bound, which is
/// how port 0 is resolved.
static inline int kiln_listen(const char *host, const char *port, int backlog, int *bound_port) {
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) return -EADDRNOTAVAIL;
    int err = EADDRNOTAVAIL;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) { err = errno; continue; }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, backlog) == 0) {
            struct sockaddr_storage ss;
            socklen_t len = sizeof ss;
            *bound_port = 0;
            if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
                if (ss.ss_family == AF_INET) *bound_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
                else if (ss.ss_family == AF_INET6) *bound_port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
            }
            freeaddrinfo(res);
            return fd;
        }
        err = errno;
        close(fd);
    }
    freeaddrinfo(res);
    return -err;
}

/// MHD_start_daemon is variadic and Swift cannot call it. This shim passes every
/// option Kiln uses through one MHD_OPTION_ARRAY. `listen_fd` is a socket that
/// Kiln bound and listens on itself, so that port 0 can be resolved with getsockname.
static inline struct MHD_Daemon *kiln_mhd_start(unsigned int flags,
                                                int listen_fd,
                                                unsigned int pool_threads,
                                                size_t connection_memory_limit,
                                                unsigned int connection_limit,
                                                unsigned int connection_timeout_s,
                                                MHD_AccessHandlerCallback handler,
                                                void *handler_cls,
                                                MHD_RequestCompletedCallback completed,
                                                void *completed_cls,
                                                MHD_NotifyConnectionCallback notify_connection,
                                                void *notify_connection_cls,
                                                void *(*uri_log)(void *cls, const char *uri, struct MHD_Connection *con),
                                                void *uri_log_cls) {
    struct MHD_OptionItem ops[] = {
        {MHD_OPTION_LISTEN_SOCKET, listen_fd, NULL},
        {MHD_OPTION_THREAD_POOL_SIZE, pool_threads, NULL},
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t)connection_memory_limit, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, connection_limit, NULL},
        {MHD_OPTION_CONNECTION_TIMEOUT, connection_timeout_s, NULL},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)completed, completed_cls},
        {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)notify_connection, notify_connection_cls},
        {MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t)kiln_mhd_unescape, NULL},
        /* The request target exactly as received, before libmicrohttpd splits and
           decodes it: Kiln parses it once itself (RequestTarget.swift). */
        {MHD_OPTION_URI_LOG_CALLBACK, (intptr_t)uri_log, uri_log_cls},
        {MHD_OPTION_END, 0, NULL},
    };
    return MHD_start_daemon(flags, 0, NULL, NULL, handler, handler_cls,
                            MHD_OPTION_ARRAY, ops, MHD_OPTION_END);
}

/// The content reader's "end of stream" and "error" sentinels are macros of
/// type ssize_t that Swift does not import.
static inline ssize_t kiln_mhd_end_of_stream(void) { return MHD_CONTENT_READER_END_OF_STREAM; }
static inline ssize_t kiln_mhd_end_with_error(void) { return MHD_CONTENT_READER_END_WITH_ERROR; }
/// MHD_SIZE_UNKNOWN is a macro Swift does not import either.
static inline uint64_t kiln_mhd_size_unknown(void) { return MHD_SIZE_UNKNOWN; }

#endif
