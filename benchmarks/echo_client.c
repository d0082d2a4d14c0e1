/* Load generator for bench_echo.py (compiled by it with `cc -O2`; not part of greenhub).
 *
 *   echo_client HOST PORT CONNS SIZE WARMUP_S DURATION_S SERVER_PID
 *
 * Opens CONNS TCP connections (TCP_NODELAY).  Each one plays ping-pong: it sends SIZE
 * bytes, reads the SIZE bytes echoed back, then sends the next message.  One thread,
 * non-blocking sockets, epoll.
 *
 * After WARMUP_S seconds the measured window starts: the client reads the server's
 * CPU time (utime, stime in /proc/SERVER_PID/stat) and its own (getrusage) and counts
 * the round trips completed until DURATION_S seconds later, where it reads both again
 * (with the server's minor page faults).
 * Then it sends nothing new, waits (at most 2 s) for the replies in flight, closes the
 * connections and prints one JSON line:
 *
 *   {"round_trips": N, "seconds": S, "server_user": S, "server_sys": S,
 *    "server_minflt": N, "client_cpu": S}
 *
 * Any error (refused, reset, closed by the server, more bytes than sent) prints a
 * message on stderr and exits with status 1.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    size_t sent, recvd; /* bytes of the current message */
    int want_out;       /* EPOLLOUT registered: the message is not all sent yet */
    int busy;           /* a message is in flight */
};

static size_t size;
static char *msg, *rbuf;
static int ep;

static void
fail(const char *what)
{
    perror(what);
    exit(1);
}

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double
own_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

/* The server's user and system CPU seconds and minor page faults so far. */
static void
server_cpu(int pid, double *user, double *sys, unsigned long *minflt)
{
    char path[64], buf[1024];
    unsigned long ut, st;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        fail(path);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* fields after "pid (comm) ": state ppid pgrp session tty tpgid flags minflt
     * cminflt majflt cmajflt utime stime */
    char *p = strrchr(buf, ')');
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %lu %*u %*u %*u %lu %lu", minflt, &ut,
                     &st) != 3) {
        fprintf(stderr, "echo_client: cannot parse %s\n", path);
        exit(1);
    }
    double hz = (double)sysconf(_SC_CLK_TCK);
    *user = ut / hz;
    *sys = st / hz;
}

static void
watch(struct conn *c, int want_out)
{
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        fail("epoll_ctl");
    c->want_out = want_out;
}

/* Send what is left of the current message; watch for EPOLLOUT while some is left. */
static void
send_more(struct conn *c)
{
    while (c->sent < size) {
        ssize_t n = write(c->fd, msg + c->sent, size - c->sent);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;
            fail("write");
        }
        c->sent += (size_t)n;
    }
    if ((c->sent < size) != c->want_out)
        watch(c, c->sent < size);
}

static void
start_message(struct conn *c)
{
    c->sent = c->recvd = 0;
    c->busy = 1;
    send_more(c);
}

/* Read what has arrived; 1 if that completed the round trip. */
static int
receive(struct conn *c)
{
    while (c->recvd < size) {
        size_t want = size - c->recvd;
        ssize_t n = read(c->fd, rbuf, want < 65536 ? want : 65536);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            fail("read");
        }
        if (n == 0) {
            fprintf(stderr, "echo_client: the server closed a connection\n");
            exit(1);
        }
        c->recvd += (size_t)n;
        if (c->recvd > c->sent) {
            fprintf(stderr, "echo_client: received more bytes than were sent\n");
            exit(1);
        }
    }
    return 1;
}

int
main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: %s HOST PORT CONNS SIZE WARMUP_S DURATION_S SERVER_PID\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), nconn = atoi(argv[3]), pid = atoi(argv[7]);
    double warmup = atof(argv[5]), duration = atof(argv[6]);
    size = (size_t)atol(argv[4]);
    if (port <= 0 || nconn <= 0 || size == 0 || duration <= 0 || pid <= 0) {
        fprintf(stderr, "echo_client: bad arguments\n");
        return 2;
    }
    alarm((unsigned)(warmup + duration) + 30); /* never outlive a dead parent for long */

    msg = malloc(size);
    rbuf = malloc(65536);
    struct conn *conns = calloc((size_t)nconn, sizeof *conns);
    if (!msg || !rbuf || !conns)
        fail("malloc");
    for (size_t i = 0; i < size; i++)
        msg[i] = (char)('a' + i % 26);

    ep = epoll_create1(0);
    if (ep < 0)
        fail("epoll_create1");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "echo_client: bad IPv4 address %s\n", host);
        return 2;
    }
    for (int i = 0; i < nconn; i++) {
        struct conn *c = &conns[i];
        int one = 1;
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        if (c->fd < 0)
            fail("socket");
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0)
            fail("connect");
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            fail("epoll_ctl");
    }

    double t = now(), t_measure = t + warmup, t_end = t_measure + duration, t_quit = t_end + 2;
    double t0 = 0, t1 = 0, u0 = 0, s0 = 0, u1 = 0, s1 = 0, c0 = 0, c1 = 0;
    unsigned long f0 = 0, f1 = 0;
    unsigned long long count = 0, measured = 0;
    int phase = 0; /* 0 warm-up, 1 measured window, 2 drain */
    int busy = nconn;
    for (int i = 0; i < nconn; i++)
        start_message(&conns[i]);

    struct epoll_event evs[256];
    for (;;) {
        t = now();
        if (phase == 0 && t >= t_measure) {
            server_cpu(pid, &u0, &s0, &f0);
            c0 = own_cpu();
            t0 = now();
            count = 0;
            phase = 1;
        }
        if (phase == 1 && t >= t_end) {
            server_cpu(pid, &u1, &s1, &f1);
            c1 = own_cpu();
            t1 = now();
            measured = count;
            phase = 2;
        }
        if (phase == 2 && (busy == 0 || t >= t_quit))
            break;
        double next = phase == 0 ? t_measure : phase == 1 ? t_end : t_quit;
        int timeout = (int)((next - t) * 1000) + 1;
        int n = epoll_wait(ep, evs, 256, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if ((evs[i].events & EPOLLOUT) && c->sent < size)
                send_more(c);
            if ((evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && c->busy && receive(c)) {
                count++;
                if (phase < 2) {
                    start_message(c);
                }
                else {
                    c->busy = 0;
                    busy--;
                }
            }
        }
    }
    for (int i = 0; i < nconn; i++)
        close(conns[i].fd);
    printf("{\"round_trips\": %llu, \"seconds\": %.6f, \"server_user\": %.3f, "
           "\"server_sys\": %.3f, \"server_minflt\": %lu, \"client_cpu\": %.6f}\n",
           measured, t1 - t0, u1 - u0, s1 - s0, f1 - f0, c1 - c0);
    return 0;
}
