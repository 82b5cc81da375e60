// The floor of a loopback proxy's CPU per request: a relay that does nothing but move bytes.
//
// Each accepted client connection gets its own upstream connection, and whatever arrives on one
// is written to the other: no HTTP parsing, no admission, no timers, no headers added. Keep-alive
// HTTP/1 works through it unchanged because the pairing is fixed. Whatever CPU it spends per
// request is the kernel's socket work plus the least event handling one design can do, so no
// proxy built on the same interface can spend less.
//
//   relay epoll    LISTEN_PORT UPSTREAM_PORT WORKERS   (nonblocking sockets, one epoll loop)
//   relay io_uring LISTEN_PORT UPSTREAM_PORT WORKERS   (recv/send submitted in batches)
//
// Used by benches/sidecar-overhead.sh (RELAY_FLOOR=1); a benchmark tool, not part of asyncpool.
// Errors end the worker: the benchmark checks every request succeeded.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUF 16384
#define MAX_FDS 65536

static int upstream_port;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int listener(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    if (fd < 0) die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(fd, 1024) < 0) die("listen");
    return fd;
}

static int dial_upstream(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    if (fd < 0) die("socket");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(upstream_port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

// ---- epoll: level-triggered, read then write the whole chunk to the partner ----

static int partner[MAX_FDS];

static void close_pair(int epfd, int fd) {
    int other = partner[fd];
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
    epoll_ctl(epfd, EPOLL_CTL_DEL, other, NULL);
    close(fd);
    close(other);
}

static void write_all(int fd, const char *data, ssize_t len) {
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EAGAIN) continue; // small messages: the buffer drains at once
        if (n <= 0) return;
        data += n;
        len -= n;
    }
}

static void run_epoll(int lfd) {
    int epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    struct epoll_event events[256];
    static char buf[BUF];
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    for (;;) {
        int n = epoll_wait(epfd, events, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int client = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (client < 0) continue;
                int one = 1;
                setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                int up = dial_upstream();
                if (client >= MAX_FDS || up >= MAX_FDS) die("too many connections");
                partner[client] = up;
                partner[up] = client;
                struct epoll_event c = {.events = EPOLLIN, .data.fd = client};
                struct epoll_event u = {.events = EPOLLIN, .data.fd = up};
                epoll_ctl(epfd, EPOLL_CTL_ADD, client, &c);
                epoll_ctl(epfd, EPOLL_CTL_ADD, up, &u);
                continue;
            }
            ssize_t got = recv(fd, buf, BUF, 0);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) continue;
                close_pair(epfd, fd);
                continue;
            }
            write_all(partner[fd], buf, got);
        }
    }
}

// ---- io_uring: one recv outstanding per socket; a completed recv becomes a send ----

enum kind { ACCEPT, RECV, SEND };
struct op {
    enum kind kind;
    int fd;       // where this op reads (RECV) or writes (SEND)
    int from;     // SEND: the socket whose recv filled the buffer, re-armed after the send
    char buf[BUF];
};

static struct io_uring ring;

static struct io_uring_sqe *sqe(void) {
    struct io_uring_sqe *s = io_uring_get_sqe(&ring);
    if (!s) {
        io_uring_submit(&ring);
        s = io_uring_get_sqe(&ring);
    }
    if (!s) die("io_uring_get_sqe");
    return s;
}

static struct op *ops[MAX_FDS]; // one buffer per socket, reused for its recv and the send it feeds

static void arm_recv(int fd) {
    struct op *op = ops[fd];
    op->kind = RECV;
    op->fd = fd;
    struct io_uring_sqe *s = sqe();
    io_uring_prep_recv(s, fd, op->buf, BUF, 0);
    io_uring_sqe_set_data(s, op);
}

static void arm_accept(int lfd, struct op *accept_op) {
    struct io_uring_sqe *s = sqe();
    io_uring_prep_accept(s, lfd, NULL, NULL, 0);
    io_uring_sqe_set_data(s, accept_op);
}

static void run_uring(int lfd) {
    struct op accept_op = {.kind = ACCEPT, .fd = lfd};
    if (io_uring_queue_init(1024, &ring, 0) < 0) die("io_uring_queue_init");
    arm_accept(lfd, &accept_op);
    for (;;) {
        struct io_uring_cqe *cqe;
        if (io_uring_submit_and_wait(&ring, 1) < 0) die("io_uring_submit_and_wait");
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            struct op *op = io_uring_cqe_get_data(cqe);
            int res = cqe->res;
            seen++;
            if (op->kind == ACCEPT) {
                arm_accept(lfd, op);
                if (res < 0) continue;
                int one = 1;
                setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                int up = dial_upstream();
                if (res >= MAX_FDS || up >= MAX_FDS) die("too many connections");
                partner[res] = up;
                partner[up] = res;
                ops[res] = calloc(1, sizeof(struct op));
                ops[up] = calloc(1, sizeof(struct op));
                if (!ops[res] || !ops[up]) die("calloc");
                arm_recv(res);
                arm_recv(up);
            } else if (op->kind == RECV) {
                if (res <= 0 || partner[op->fd] < 0) {
                    // One side ended: shut the other down so that its recv ends it too.
                    int fd = op->fd, other = partner[fd];
                    if (other >= 0) {
                        partner[other] = -1;
                        shutdown(other, SHUT_RDWR);
                    }
                    partner[fd] = -1;
                    ops[fd] = NULL;
                    close(fd);
                    free(op);
                    continue;
                }
                op->kind = SEND;
                op->from = op->fd;
                op->fd = partner[op->fd];
                struct io_uring_sqe *s = sqe();
                io_uring_prep_send(s, op->fd, op->buf, res, MSG_NOSIGNAL | MSG_WAITALL);
                io_uring_sqe_set_data(s, op);
            } else {
                if (res < 0) { // the partner went away: end this side too
                    ops[op->from] = NULL;
                    partner[op->from] = -1;
                    close(op->from);
                    free(op);
                    continue;
                }
                arm_recv(op->from);
            }
        }
        io_uring_cq_advance(&ring, seen);
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: relay epoll|io_uring LISTEN_PORT UPSTREAM_PORT WORKERS\n");
        return 2;
    }
    int port = atoi(argv[2]);
    upstream_port = atoi(argv[3]);
    int workers = atoi(argv[4]);
    int uring = strcmp(argv[1], "io_uring") == 0;
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < MAX_FDS; i++) partner[i] = -1;
    // One process per worker, each with its own SO_REUSEPORT listener (as nginx's workers).
    for (int i = 0; i < workers; i++) {
        if (fork() == 0) {
            // A worker ends with its parent, which is what the benchmark stops.
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            int lfd = listener(port);
            if (uring) run_uring(lfd);
            else run_epoll(lfd);
            return 0;
        }
    }
    while (wait(NULL) > 0) {}
    return 0;
}
