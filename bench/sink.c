/* sink: one UDP port on 127.0.0.1 that receives (and discards) everything sent to it.
 * The floor's packets go here, as ivrd's go to SIPp's media port.
 * usage: sink PORT [SECONDS] [read|hold]
 *   read: receive and discard every packet (a receiver that keeps up)
 *   hold: bind and never read, so the queue fills and the kernel drops (what SIPp's media
 *         port does without -rtp_echo); the default, to match how ivrd's packets are received */
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s PORT [SECONDS]\n", argv[0]); return 2; }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 1; }
    struct timeval tv = { 1, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    double secs = argc > 2 ? atof(argv[2]) : 1e9;
    time_t end = time(NULL) + (time_t)secs;
    int hold = !(argc > 3 && strcmp(argv[3], "read") == 0);
    char buf[2048];
    if (hold) { sleep((unsigned)secs); printf("sink_packets held\n"); return 0; }
    unsigned long n = 0;
    while (time(NULL) < end) { if (recv(fd, buf, sizeof buf, 0) > 0) n++; }
    printf("sink_packets %lu\n", n);
    return 0;
}
