/* sink: one UDP port on 127.0.0.1 that receives (and discards) everything sent to it.
 * The floor's packets go here, as ivrd's go to SIPp's media port.
 * usage: sink PORT [SECONDS] [read|hold|echo]
 *   read: receive and discard every packet (a receiver that keeps up)
 *   hold: bind and never read, so the queue fills and the kernel drops (what SIPp's media
 *         port does without -rtp_echo); the default, to match how ivrd's packets are received
 *   echo: send every packet back to where it came from (ivrd's RTP port of that call), so
 *         ivrd receives 50 packets a second per call as it does from real callers. Batched
 *         (recvmmsg/sendmmsg, 64 at a time), with an 8 MiB receive buffer (as far as
 *         net.core.rmem_max allows). The source address of the echo is this socket's, i.e. the
 *         address the SDP offer named, which strict RTP learns at once. */
#define _GNU_SOURCE
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

/* SIGTERM/SIGINT end the echo loop early, and the counts are still printed. */
static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int echo(int fd, time_t end) {
    static char bufs[BATCH][2048];
    static struct sockaddr_in from[BATCH];
    struct iovec iov[BATCH];
    struct mmsghdr rx[BATCH], tx[BATCH];
    unsigned long n = 0, sent = 0, errs = 0;
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = sizeof bufs[i];
    }
    struct sigaction sa = { .sa_handler = on_signal };   /* no SA_RESTART: recvmmsg returns */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    while (!stop && time(NULL) < end) {
        for (int i = 0; i < BATCH; i++) {
            memset(&rx[i], 0, sizeof rx[i]);
            iov[i].iov_len = sizeof bufs[i];
            rx[i].msg_hdr.msg_iov = &iov[i];
            rx[i].msg_hdr.msg_iovlen = 1;
            rx[i].msg_hdr.msg_name = &from[i];
            rx[i].msg_hdr.msg_namelen = sizeof from[i];
        }
        /* Blocks for the first packet (or the 1 s receive timeout), then takes what is queued. */
        int got = recvmmsg(fd, rx, BATCH, MSG_WAITFORONE, NULL);
        if (got <= 0) continue;
        n += got;
        for (int i = 0; i < got; i++) {
            iov[i].iov_len = rx[i].msg_len;
            memset(&tx[i], 0, sizeof tx[i]);
            tx[i].msg_hdr.msg_iov = &iov[i];
            tx[i].msg_hdr.msg_iovlen = 1;
            tx[i].msg_hdr.msg_name = &from[i];
            tx[i].msg_hdr.msg_namelen = rx[i].msg_hdr.msg_namelen;
        }
        int done = 0;
        while (done < got) {
            int s = sendmmsg(fd, tx + done, got - done, 0);
            if (s <= 0) { errs += got - done; break; }
            done += s;
        }
        sent += done;
    }
    printf("sink_packets %lu\nsink_echoed %lu\nsink_echo_errors %lu\n", n, sent, errs);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s PORT [SECONDS] [read|hold|echo]\n", argv[0]); return 2; }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 1; }
    struct timeval tv = { 1, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    double secs = argc > 2 ? atof(argv[2]) : 1e9;
    time_t end = time(NULL) + (time_t)secs;
    const char *mode = argc > 3 ? argv[3] : "hold";
    char buf[2048];
    if (strcmp(mode, "echo") == 0) {
        int big = 8 << 20;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        return echo(fd, end);
    }
    if (strcmp(mode, "read") != 0) { sleep((unsigned)secs); printf("sink_packets held\n"); return 0; }
    unsigned long n = 0;
    while (time(NULL) < end) { if (recv(fd, buf, sizeof buf, 0) > 0) n++; }
    printf("sink_packets %lu\n", n);
    return 0;
}
