/*
 * nodelay_shim.c: LD_PRELOAD shim that sets TCP_NODELAY on every TCP
 * socket a process accepts.
 *
 * rumqttd has no setting for TCP_NODELAY and leaves Nagle's algorithm on,
 * which adds tens of milliseconds to small-message latency tails. The
 * comparison must measure brokers with the same socket options, so
 * compare.sh compiles this file at run time and starts rumqttd with
 *
 *     LD_PRELOAD=target/bench-peers/nodelay_shim.so rumqttd -c ...
 *
 * It wraps accept() and accept4(): after the real call succeeds on a
 * stream socket of the INET or INET6 family, it sets TCP_NODELAY (errors
 * ignored, as setsockopt on a non-TCP socket is harmless). Set
 * NODELAY_SHIM_DEBUG=1 to print one line per socket to stderr.
 *
 * Build: gcc -O2 -shared -fPIC -o nodelay_shim.so nodelay_shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

typedef int (*accept_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);

static void set_nodelay(int fd)
{
    int type = 0;
    int domain = 0;
    socklen_t len = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
        return;
    len = sizeof(domain);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0)
        return;
    if (domain != AF_INET && domain != AF_INET6)
        return;
    int one = 1;
    int rc = setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (getenv("NODELAY_SHIM_DEBUG") != NULL)
        fprintf(stderr, "nodelay_shim: fd %d TCP_NODELAY %s\n", fd, rc == 0 ? "set" : "failed");
}

int accept(int fd, struct sockaddr *addr, socklen_t *addrlen)
{
    static accept_fn real_accept;
    if (real_accept == NULL)
        real_accept = (accept_fn)dlsym(RTLD_NEXT, "accept");
    if (real_accept == NULL)
        return -1;
    int conn = real_accept(fd, addr, addrlen);
    if (conn >= 0)
        set_nodelay(conn);
    return conn;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *addrlen, int flags)
{
    static accept4_fn real_accept4;
    if (real_accept4 == NULL)
        real_accept4 = (accept4_fn)dlsym(RTLD_NEXT, "accept4");
    if (real_accept4 == NULL)
        return -1;
    int conn = real_accept4(fd, addr, addrlen, flags);
    if (conn >= 0)
        set_nodelay(conn);
    return conn;
}
