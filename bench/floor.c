/* floor: the cheapest possible RTP sender, to compare ivrd's media engine against.
 *
 * No SIP, no logic: N UDP sockets bound to 127.0.0.1:<base>+2i (like ivrd's port pool), one
 * thread, one absolute clock of TICK_MS (clock_nanosleep TIMER_ABSTIME, 1 µs timer slack),
 * each stream sends one 172-byte RTP packet (12-byte header + 160 bytes PCMU) every 20 ms.
 * Streams are spread evenly over the 20/TICK_MS phases of that clock, as ivrd's pacer does
 * (1 ms ticks, 20 phases). Every packet goes to one sink address (the same kind of receiver
 * SIPp's media port is for ivrd).
 *
 * usage: floor N SECONDS SINK_PORT [BASE_PORT=20000] [TICK_MS=1]
 * Loopback only: binds and sends to 127.0.0.1, nothing else.
 * Prints: packets sent, send errors, late ticks (> 5 ms late, same rule as ivrd).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LATE_NS 5000000L /* a tick this late counts as late, the same rule as ivrd */

static void ts_add(struct timespec *t, long ns) {
    t->tv_nsec += ns;
    while (t->tv_nsec >= 1000000000L) { t->tv_nsec -= 1000000000L; t->tv_sec++; }
}
static long ts_diff_ns(const struct timespec *a, const struct timespec *b) {
    return (a->tv_sec - b->tv_sec) * 1000000000L + (a->tv_nsec - b->tv_nsec);
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s N SECONDS SINK_PORT [BASE_PORT]\n", argv[0]); return 2; }
    int n = atoi(argv[1]);
    double secs = atof(argv[2]);
    int sink_port = atoi(argv[3]);
    int base = argc > 4 ? atoi(argv[4]) : 20000;
    int tick_ms = argc > 5 ? atoi(argv[5]) : 1;
    if (tick_ms < 1 || 20 % tick_ms != 0) { fprintf(stderr, "TICK_MS must divide 20\n"); return 2; }
    long tick_ns = tick_ms * 1000000L;
    int phases = 20 / tick_ms;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    int *fd = calloc(n, sizeof(int));
    uint16_t *seq = calloc(n, sizeof(uint16_t));
    uint32_t *ts = calloc(n, sizeof(uint32_t));
    uint32_t *ssrc = calloc(n, sizeof(uint32_t));
    srand(getpid());
    for (int i = 0; i < n; i++) {
        fd[i] = socket(AF_INET, SOCK_DGRAM, 0);
        if (fd[i] < 0) { perror("socket"); return 1; }
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(base + 2 * i) };
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        if (bind(fd[i], (struct sockaddr *)&a, sizeof a) < 0) {
            /* A port taken by another process on a shared host (e.g. a test suite's daemon):
               bind that stream to a port of the kernel's choosing instead. The cost per packet
               is the same; only the capture, which samples ports base + 2i, may miss it. */
            if (errno != EADDRINUSE) {
                fprintf(stderr, "bind 127.0.0.1:%d: %s\n", base + 2 * i, strerror(errno));
                return 1;
            }
            fprintf(stderr, "bind 127.0.0.1:%d: in use; an ephemeral port instead\n", base + 2 * i);
            a.sin_port = 0;
            if (bind(fd[i], (struct sockaddr *)&a, sizeof a) < 0) {
                fprintf(stderr, "bind 127.0.0.1:0: %s\n", strerror(errno));
                return 1;
            }
        }
        seq[i] = rand(); ts[i] = rand(); ssrc[i] = rand();
    }
    struct sockaddr_in dst = { .sin_family = AF_INET, .sin_port = htons(sink_port) };
    inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);

    unsigned char pkt[172];
    memset(pkt + 12, 0xff, 160); /* PCMU silence, as ivrd sends between prompts */
    struct timespec start, next, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    next = start;
    long ticks = (long)(secs * 1000.0 / tick_ms);
    unsigned long sent = 0, errs = 0, late = 0;
    for (long t = 0; t < ticks; t++) {
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (ts_diff_ns(&now, &next) > LATE_NS) late++;
        int phase = (int)(t % phases);
        for (int i = phase; i < n; i += phases) {
            pkt[0] = 0x80;
            pkt[1] = (t < phases) ? 0x80 : 0x00; /* marker on the first packet, PT 0 */
            uint16_t s = htons(seq[i]++);
            uint32_t tsn = htonl(ts[i]); ts[i] += 160;
            uint32_t ss = htonl(ssrc[i]);
            memcpy(pkt + 2, &s, 2); memcpy(pkt + 4, &tsn, 4); memcpy(pkt + 8, &ss, 4);
            if (sendto(fd[i], pkt, sizeof pkt, 0, (struct sockaddr *)&dst, sizeof dst) == sizeof pkt) sent++;
            else errs++;
        }
        ts_add(&next, tick_ns);
    }
    printf("floor_packets_sent %lu\nfloor_send_errors %lu\nfloor_late_ticks %lu\nfloor_ticks %ld\n", sent, errs, late, ticks);
    return 0;
}
