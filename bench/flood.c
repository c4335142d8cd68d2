/* flood: the attacker side of bench/flood.py. SIP floods over UDP and TCP from many loopback
 * source addresses (127.0.0.0/8 all routes to lo), as fast as one core allows or at a set rate.
 *
 * usage: flood MODE [options]
 *   MODE  invite      full calls: INVITE (PCMU SDP), ACK the 200 (its To tag), BYE after -H ms
 *         noack       INVITEs that are never ACKed (each holds an RTP port until ack_timeout_ms)
 *         options     OPTIONS, with -v Via headers in all (default 1)
 *         tcp-idle    connections that connect and send nothing
 *         tcp-noread  connections that send OPTIONS as fast as they can and never read
 *         tcp-slow    connections that send an OPTIONS one byte a second (slowloris)
 *   -t IP:PORT   target (127.0.0.1:15060)
 *   -s IP        first source address (127.0.0.2); -n N sources: IP, IP+1, ... (1; UDP up to
 *                16 M, TCP up to 4096)
 *   -r RATE      UDP: new requests per second; TCP: connection attempts per second (0 = as
 *                fast as possible)
 *   -d SECS      how long to send (10); UDP answers are collected -g SECS longer (3)
 *   -v VIAS      Via headers per OPTIONS (1; the extra ones are 10.x.y.z hops)
 *   -H MS        invite: BYE this long after the ACK (0 = right after it)
 *   -k MS        invite with -H: while a call is held, send one RTP packet to its RTP port
 *                every MS ms from the address its SDP named (so the RTP timeout never ends it)
 *   -c CONNS     TCP: connections to hold (1000); closed ones are reopened within -r
 *   -w WORKERS   TCP: processes sharing the connections (1; each needs CONNS/WORKERS fds)
 *   -u USER      Request-URI user (100)
 *   -o FILE      write the report there ("key value" lines) as well as to stdout
 * Progress goes to stderr once a second. Loopback only: refuses a target or a source outside
 * 127/8. UDP: one socket sends every request, its source address chosen per datagram
 * (IP_PKTINFO; every 127/8 address is local), and receives the answers to all of them; it is
 * bound to 0.0.0.0:15080 for that (the media socket, which never reads, to 0.0.0.0:15082).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define SRC_SIP_PORT 15080   /* the attackers' SIP port on each source address */
#define SRC_MEDIA_PORT 15082 /* where their SDP says to send RTP: bound, never read */
#define MAXSRC (16 << 20)
#define MAXTCPSRC 4096
#define RXBATCH 32
#define RXBUF 16384

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) { perror(what); exit(1); }

/* ------------------------------------------------------------------ options */
static const char *mode;
static struct sockaddr_in target;
static char target_str[32] = "127.0.0.1:15060";
static struct in_addr first_src;
static int nsrc = 1;
static double rate = 0, secs = 10, grace = 3;
static int vias = 1, hold_ms = 0, keepalive_ms = 0, conns = 1000, workers = 1;
static const char *user = "100", *outfile;
static int run_id;

static void src_ip(int i, struct in_addr *a, char *str) {
    a->s_addr = htonl(ntohl(first_src.s_addr) + (uint32_t)i);
    if (str) inet_ntop(AF_INET, a, str, 16);
}

/* ------------------------------------------------------------------ report */
static FILE *report_files[2];
static int nreport;
static void rep(const char *key, double v) {
    for (int i = 0; i < nreport; i++) {
        if (v == (double)(long long)v) fprintf(report_files[i], "%s %lld\n", key, (long long)v);
        else fprintf(report_files[i], "%s %.3f\n", key, v);
    }
}
static void rep_open(void) {
    report_files[nreport++] = stdout;
    if (outfile) {
        FILE *f = fopen(outfile, "w");
        if (!f) die(outfile);
        report_files[nreport++] = f;
    }
}
static void rep_close(void) {
    for (int i = 0; i < nreport; i++) fflush(report_files[i]);
    if (nreport > 1) fclose(report_files[1]);
}

/* ================================================================== UDP */
static int sip_fd = -1, media_fd = -1; /* 0.0.0.0:15080 and 0.0.0.0:15082 */

/* The source of request n: its address as text (for the headers) and as a number. */
static void src_of(uint64_t n, char *ip, struct in_addr *a) {
    src_ip((int)(n % (uint64_t)nsrc), a, ip);
}

/* sendto from `src` (IP_PKTINFO picks the source address of this one datagram). */
static ssize_t send_from(int fd, struct in_addr src, const void *buf, size_t len,
                         const struct sockaddr_in *to) {
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(struct in_pktinfo))];
        struct cmsghdr align;
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct msghdr mh = {.msg_name = (void *)to, .msg_namelen = sizeof *to, .msg_iov = &iov,
                        .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
    struct in_pktinfo *pi = (struct in_pktinfo *)CMSG_DATA(c);
    pi->ipi_spec_dst = src;
    return sendmsg(fd, &mh, 0);
}

enum { ST_100 = 1, ST_200 = 2, ST_FINAL = 4, ST_BYE = 8, ST_BYE_DONE = 16 };
static uint8_t *calls; /* per request number: what it got */
static uint64_t maxcalls;

static struct {
    uint64_t sent, send_err, bytes, r100, r200, r200_dup, r403, r503, r513, r4xx, r5xx, rother,
        acks, byes, bye200, bye_other, rx_datagrams, rx_unparsed, rtp_keepalives, held_max;
} u;

static char *extra_vias; /* vias-1 extra Via lines, built once */
static size_t extra_vias_len;

static int build_request(uint64_t n, char *buf, size_t cap) {
    char ip[16];
    struct in_addr a;
    src_of(n, ip, &a);
    int kind_invite = strcmp(mode, "options") != 0;
    if (kind_invite) {
        char sdp[512];
        int sl = snprintf(sdp, sizeof sdp,
                          "v=0\r\no=- %llu 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n"
                          "m=audio %d RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
                          "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n",
                          (unsigned long long)n, ip, ip, SRC_MEDIA_PORT);
        return snprintf(buf, cap,
                        "INVITE sip:%s@%s SIP/2.0\r\n"
                        "Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK-fi%d-%llu;rport\r\n"
                        "Max-Forwards: 70\r\n"
                        "From: <sip:flood@%s:%d>;tag=ft%llu\r\n"
                        "To: <sip:%s@%s>\r\n"
                        "Call-ID: fl%d-%llu@%s\r\n"
                        "CSeq: 1 INVITE\r\n"
                        "Contact: <sip:flood@%s:%d>\r\n"
                        "Content-Type: application/sdp\r\n"
                        "Content-Length: %d\r\n\r\n%s",
                        user, target_str, ip, SRC_SIP_PORT, run_id, (unsigned long long)n,
                        ip, SRC_SIP_PORT, (unsigned long long)n, user, target_str, run_id,
                        (unsigned long long)n, ip, ip, SRC_SIP_PORT, sl, sdp);
    }
    int l = snprintf(buf, cap,
                     "OPTIONS sip:%s@%s SIP/2.0\r\n"
                     "Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK-fo%d-%llu;rport\r\n",
                     user, target_str, ip, SRC_SIP_PORT, run_id, (unsigned long long)n);
    if (extra_vias_len && (size_t)l + extra_vias_len < cap) {
        memcpy(buf + l, extra_vias, extra_vias_len);
        l += extra_vias_len;
    }
    l += snprintf(buf + l, cap - l,
                  "Max-Forwards: 70\r\n"
                  "From: <sip:flood@%s:%d>;tag=ft%llu\r\n"
                  "To: <sip:%s@%s>\r\n"
                  "Call-ID: fl%d-%llu@%s\r\n"
                  "CSeq: 1 OPTIONS\r\n"
                  "Accept: application/sdp\r\n"
                  "Content-Length: 0\r\n\r\n",
                  ip, SRC_SIP_PORT, (unsigned long long)n, user, target_str, run_id,
                  (unsigned long long)n, ip);
    return l;
}

/* The value of header `name` (long form, as ivrd writes it) up to CRLF, or NULL. */
static const char *header(const char *msg, size_t len, const char *name, size_t *vlen) {
    char pat[40];
    int pl = snprintf(pat, sizeof pat, "\r\n%s:", name);
    const char *p = memmem(msg, len, pat, pl);
    if (!p) return NULL;
    p += pl;
    while (p < msg + len && *p == ' ') p++;
    const char *e = memmem(p, msg + len - p, "\r\n", 2);
    if (!e) return NULL;
    *vlen = e - p;
    return p;
}

struct pending_bye {
    uint64_t n;
    double due, last_ka;
    char tag[48];
    uint16_t rtp_port, seq;
};
static struct pending_bye *byeq;
static size_t byeq_cap, byeq_head, byeq_tail;

static void send_in_dialog(uint64_t n, const char *method, int cseq, const char *tag) {
    char ip[16];
    struct in_addr a;
    src_of(n, ip, &a);
    char buf[1024];
    int l = snprintf(buf, sizeof buf,
                     "%s sip:%s@%s SIP/2.0\r\n"
                     "Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK-f%c%d-%llu;rport\r\n"
                     "Max-Forwards: 70\r\n"
                     "From: <sip:flood@%s:%d>;tag=ft%llu\r\n"
                     "To: <sip:%s@%s>;tag=%s\r\n"
                     "Call-ID: fl%d-%llu@%s\r\n"
                     "CSeq: %d %s\r\n"
                     "Content-Length: 0\r\n\r\n",
                     method, user, target_str, ip, SRC_SIP_PORT, method[0] == 'A' ? 'a' : 'b',
                     run_id, (unsigned long long)n, ip, SRC_SIP_PORT, (unsigned long long)n,
                     user, target_str, tag, run_id, (unsigned long long)n, ip, cseq, method);
    if (send_from(sip_fd, a, buf, l, &target) < 0) u.send_err++;
}

static void handle_response(const char *m, size_t len) {
    u.rx_datagrams++;
    if (len < 12 || memcmp(m, "SIP/2.0 ", 8) != 0) { u.rx_unparsed++; return; }
    int code = atoi(m + 8);
    size_t cl, il;
    const char *cseq = header(m, len, "CSeq", &cl);
    const char *cid = header(m, len, "Call-ID", &il);
    if (!cseq || !cid) { u.rx_unparsed++; return; }
    char prefix[32];
    int pl = snprintf(prefix, sizeof prefix, "fl%d-", run_id);
    if (il <= (size_t)pl || memcmp(cid, prefix, pl) != 0) { u.rx_unparsed++; return; }
    uint64_t n = strtoull(cid + pl, NULL, 10);
    if (n >= maxcalls) { u.rx_unparsed++; return; }
    const char *meth = cseq;
    while (meth < cseq + cl && (*meth >= '0' && *meth <= '9')) meth++;
    while (meth < cseq + cl && *meth == ' ') meth++;
    int is_bye = (cseq + cl - meth) >= 3 && memcmp(meth, "BYE", 3) == 0;
    if (is_bye) {
        if (code == 200) u.bye200++;
        else if (code >= 200) u.bye_other++;
        if (code >= 200) calls[n] |= ST_BYE_DONE;
        return;
    }
    if (code < 200) {
        if (!(calls[n] & ST_100)) u.r100++;
        calls[n] |= ST_100;
        return;
    }
    if (calls[n] & ST_FINAL) {
        if (code == 200) u.r200_dup++;
        /* A repeated 200 means our ACK was lost: ACK again (full calls only). */
        if (code == 200 && strcmp(mode, "invite") == 0) goto ack;
        return;
    }
    calls[n] |= ST_FINAL;
    switch (code) {
    case 200: u.r200++; calls[n] |= ST_200; break;
    case 403: u.r403++; return;
    case 503: u.r503++; return;
    case 513: u.r513++; return;
    default:
        if (code >= 500) u.r5xx++;
        else if (code >= 400) u.r4xx++;
        else u.rother++;
        return;
    }
    if (strcmp(mode, "invite") != 0) return;
ack:;
    size_t tl;
    const char *to = header(m, len, "To", &tl);
    const char *t = to ? memmem(to, tl, ";tag=", 5) : NULL;
    if (!t) return;
    t += 5;
    size_t tagl = 0;
    while (t + tagl < to + tl && t[tagl] != ';' && t[tagl] != ' ' && tagl < 47) tagl++;
    char tag[48];
    memcpy(tag, t, tagl);
    tag[tagl] = 0;
    send_in_dialog(n, "ACK", 1, tag);
    u.acks++;
    if (calls[n] & ST_BYE) return;
    calls[n] |= ST_BYE;
    if (hold_ms <= 0) {
        send_in_dialog(n, "BYE", 2, tag);
        u.byes++;
        return;
    }
    if ((byeq_tail + 1) % byeq_cap == byeq_head) return; /* queue full: this call never ends */
    struct pending_bye *b = &byeq[byeq_tail];
    b->n = n;
    b->due = now_s() + hold_ms / 1000.0;
    b->last_ka = 0;
    b->seq = 0;
    memcpy(b->tag, tag, tagl + 1);
    const char *mline = memmem(m, len, "\r\nm=audio ", 10);
    b->rtp_port = mline ? (uint16_t)atoi(mline + 10) : 0;
    byeq_tail = (byeq_tail + 1) % byeq_cap;
    size_t held = (byeq_tail + byeq_cap - byeq_head) % byeq_cap;
    if (held > u.held_max) u.held_max = held;
}

static void bind_udp(int fd, const char *ip, int port, int rcvbuf) {
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (rcvbuf) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        fprintf(stderr, "bind %s:%d: %s\n", ip, port, strerror(errno));
        exit(1);
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
}

static int run_udp(void) {
    maxcalls = rate > 0 ? (uint64_t)(rate * secs) + 1024 : 32u << 20;
    calls = calloc(maxcalls, 1);
    byeq_cap = 1 << 20;
    byeq = calloc(byeq_cap, sizeof *byeq);
    int ep = epoll_create1(0);
    sip_fd = socket(AF_INET, SOCK_DGRAM, 0);
    bind_udp(sip_fd, "0.0.0.0", SRC_SIP_PORT, 8 << 20);
    /* ivrd sends the calls' RTP here: bound so the kernel has a socket to drop it at (a full
     * queue), as SIPp's media port does, instead of answering ICMP. */
    media_fd = socket(AF_INET, SOCK_DGRAM, 0);
    bind_udp(media_fd, "0.0.0.0", SRC_MEDIA_PORT, 4096);
    struct epoll_event ev0 = {.events = EPOLLIN, .data.u32 = 0};
    epoll_ctl(ep, EPOLL_CTL_ADD, sip_fd, &ev0);
    if (vias > 1) {
        extra_vias = malloc((size_t)vias * 64);
        for (int k = 1; k < vias; k++)
            extra_vias_len += sprintf(extra_vias + extra_vias_len,
                                      "Via: SIP/2.0/UDP 10.%d.%d.%d;branch=z9hG4bK%d\r\n",
                                      (k >> 16) & 255, (k >> 8) & 255, k & 255, k);
    }
    static char buf[70000];
    static char rx[RXBATCH][RXBUF];
    struct mmsghdr mm[RXBATCH];
    struct iovec iov[RXBATCH];
    for (int i = 0; i < RXBATCH; i++) {
        iov[i].iov_base = rx[i];
        iov[i].iov_len = RXBUF;
        memset(&mm[i], 0, sizeof mm[i]);
        mm[i].msg_hdr.msg_iov = &iov[i];
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    double start = now_s(), last_progress = start, end = start + secs, stop = end + grace;
    uint64_t last_sent = 0;
    int sending = 1;
    struct epoll_event evs[256];
    for (;;) {
        double t = now_s();
        if (sending && t >= end) sending = 0;
        if (!sending && t >= stop) break;
        int behind = 0;
        if (sending) {
            uint64_t due = rate > 0 ? (uint64_t)((t - start) * rate) : u.sent + 64;
            if (due > maxcalls) due = maxcalls;
            int batch = 0;
            while (u.sent < due && batch < 256) {
                int l = build_request(u.sent, buf, sizeof buf);
                char ip[16];
                struct in_addr a;
                src_of(u.sent, ip, &a);
                if (send_from(sip_fd, a, buf, l, &target) < 0)
                    u.send_err++;
                else
                    u.bytes += l;
                u.sent++;
                batch++;
            }
            behind = u.sent < due;
            if (u.sent >= maxcalls) sending = 0;
        }
        static double last_ka_scan;
        if (keepalive_ms > 0 && t - last_ka_scan >= 0.1) {
            /* One RTP packet per held call every keepalive_ms, from the SDP's address. */
            last_ka_scan = t;
            unsigned char pkt[172];
            memset(pkt, 0xff, sizeof pkt);
            for (size_t i = byeq_head; i != byeq_tail; i = (i + 1) % byeq_cap) {
                struct pending_bye *b = &byeq[i];
                if (!b->rtp_port || t - b->last_ka < keepalive_ms / 1000.0) continue;
                b->last_ka = t;
                pkt[0] = 0x80;
                pkt[1] = 0;
                pkt[2] = b->seq >> 8;
                pkt[3] = b->seq & 255;
                uint32_t ts = b->seq * 160u, ssrc = (uint32_t)b->n;
                memcpy(pkt + 4, &ts, 4);
                memcpy(pkt + 8, &ssrc, 4);
                b->seq++;
                struct sockaddr_in to = target;
                to.sin_port = htons(b->rtp_port);
                char ip[16];
                struct in_addr a;
                src_of(b->n, ip, &a);
                if (send_from(media_fd, a, pkt, sizeof pkt, &to) > 0)
                    u.rtp_keepalives++;
            }
        }
        while (byeq_head != byeq_tail && byeq[byeq_head].due <= t) {
            send_in_dialog(byeq[byeq_head].n, "BYE", 2, byeq[byeq_head].tag);
            u.byes++;
            byeq_head = (byeq_head + 1) % byeq_cap;
        }
        int nev = epoll_wait(ep, evs, 256, (behind || (sending && rate <= 0)) ? 0 : 1);
        for (int e = 0; e < nev; e++) {
            int fd = sip_fd;
            for (;;) {
                int got = recvmmsg(fd, mm, RXBATCH, MSG_DONTWAIT, NULL);
                if (got <= 0) break;
                for (int k = 0; k < got; k++) {
                    size_t l = mm[k].msg_len < RXBUF ? mm[k].msg_len : RXBUF;
                    handle_response(rx[k], l);
                }
                if (got < RXBATCH) break;
            }
        }
        if (t - last_progress >= 1.0) {
            fprintf(stderr, "[flood %s] t=%.0f sent=%llu (+%llu/s) 100=%llu 200=%llu 503=%llu 403=%llu 513=%llu\n",
                    mode, t - start, (unsigned long long)u.sent,
                    (unsigned long long)(u.sent - last_sent), (unsigned long long)u.r100,
                    (unsigned long long)u.r200, (unsigned long long)u.r503,
                    (unsigned long long)u.r403, (unsigned long long)u.r513);
            last_sent = u.sent;
            last_progress = t;
        }
    }
    double sent_secs = secs;
    uint64_t finals = u.r200 + u.r403 + u.r503 + u.r513 + u.r4xx + u.r5xx + u.rother;
    rep_open();
    rep("sources", nsrc);
    rep("secs", sent_secs);
    rep("sent", u.sent);
    rep("rate_achieved", u.sent / sent_secs);
    rep("bytes_sent", u.bytes);
    rep("send_errors", u.send_err);
    rep("answered_100", u.r100);
    rep("answered_200", u.r200);
    rep("answered_403", u.r403);
    rep("answered_503", u.r503);
    rep("answered_513", u.r513);
    rep("answered_4xx_other", u.r4xx);
    rep("answered_5xx_other", u.r5xx);
    rep("answered_other", u.rother);
    rep("no_final_answer", u.sent - finals);
    rep("repeated_200", u.r200_dup);
    rep("acks_sent", u.acks);
    rep("byes_sent", u.byes);
    rep("bye_200", u.bye200);
    rep("bye_other", u.bye_other);
    rep("held_calls_max", u.held_max);
    rep("rtp_keepalives", u.rtp_keepalives);
    rep("rx_datagrams", u.rx_datagrams);
    rep("rx_unparsed", u.rx_unparsed);
    rep_close();
    return 0;
}

/* ================================================================== TCP */
struct tstats {
    uint64_t attempts, connected, connect_fail, refused, addrnotavail, closed_by_peer,
        life_lt1, life_1_5, life_5_15, life_15_60, life_gt60, requests, bytes, write_fail,
        open_now, open_max, still_open_end;
    double life_sum;
};

enum { C_FREE, C_CONNECTING, C_OPEN };
struct conn {
    int fd, state, src;
    double opened; /* when connected */
    size_t pos;    /* tcp-slow: bytes of the message sent; tcp-noread: offset in the buffer */
};

static const char *opt_msg_fmt =
    "OPTIONS sip:%s@%s SIP/2.0\r\n"
    "Via: SIP/2.0/TCP %s;branch=z9hG4bK-ft%d-%d-%llu\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:flood@%s>;tag=ft%llu\r\n"
    "To: <sip:%s@%s>\r\n"
    "Call-ID: ft%d-%d-%llu@%s\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Content-Length: 0\r\n\r\n";

static void tcp_worker(int w, struct tstats *st) {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    signal(SIGPIPE, SIG_IGN);
    int mine = conns / workers + (w < conns % workers);
    if ((rlim_t)mine + 64 > rl.rlim_cur) {
        fprintf(stderr, "worker %d: %d connections need more than the fd limit %llu; use more -w\n",
                w, mine, (unsigned long long)rl.rlim_cur);
        exit(1);
    }
    struct conn *c = calloc(mine, sizeof *c);
    int ep = epoll_create1(0);
    double start = now_s(), end = start + secs, last_tick = start;
    double wrate = rate > 0 ? rate / workers : 0;
    uint64_t budget_used = 0;
    uint64_t reqno = 0;
    int kind = strcmp(mode, "tcp-idle") == 0 ? 0 : strcmp(mode, "tcp-noread") == 0 ? 1 : 2;
    char slow_msg[600];
    int slow_len = snprintf(slow_msg, sizeof slow_msg, opt_msg_fmt, user, target_str, "0.0.0.0",
                            run_id, w, 0ULL, "0.0.0.0", 0ULL, user, target_str, run_id, w, 0ULL,
                            "0.0.0.0");
    static char wbuf[65536];
    struct epoll_event evs[512];
    int next = 0; /* round-robin over free slots */
    /* sources: worker w takes every workers-th connection slot's source, so each worker
     * spreads over all sources */
    while (now_s() < end) {
        double t = now_s();
        /* (Re)open connections within the rate. */
        uint64_t allowed = wrate > 0 ? (uint64_t)((t - start) * wrate) + 1 : budget_used + 256;
        for (int scanned = 0; scanned < mine && budget_used < allowed; scanned++) {
            int i = next;
            next = (next + 1) % mine;
            if (c[i].state != C_FREE) continue;
            int gi = w + i * workers; /* global connection index */
            c[i].src = gi % nsrc;
            struct in_addr a;
            char ip[16];
            src_ip(c[i].src, &a, ip);
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (fd < 0) { st->connect_fail++; budget_used++; continue; }
            int one = 1;
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            if (kind == 1) {
                /* A small receive buffer: what a client that never reads offers. */
                int rb = 4096;
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rb, sizeof rb);
            }
            struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr = a};
            if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
                st->connect_fail++;
                close(fd);
                budget_used++;
                continue;
            }
            st->attempts++;
            budget_used++;
            int r = connect(fd, (struct sockaddr *)&target, sizeof target);
            if (r < 0 && errno != EINPROGRESS) {
                if (errno == EADDRNOTAVAIL) st->addrnotavail++;
                else if (errno == ECONNREFUSED) st->refused++;
                st->connect_fail++;
                close(fd);
                continue;
            }
            c[i].fd = fd;
            c[i].state = C_CONNECTING;
            c[i].pos = 0;
            struct epoll_event ev = {.events = EPOLLOUT | EPOLLRDHUP, .data.u32 = i};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        }
        int nev = epoll_wait(ep, evs, 512, 5);
        t = now_s();
        for (int e = 0; e < nev; e++) {
            int i = evs[e].data.u32;
            struct conn *k = &c[i];
            uint32_t ev = evs[e].events;
            int closed = 0;
            if (k->state == C_CONNECTING) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err || (ev & (EPOLLERR | EPOLLHUP))) {
                    if (err == ECONNREFUSED) st->refused++;
                    st->connect_fail++;
                    epoll_ctl(ep, EPOLL_CTL_DEL, k->fd, NULL);
                    close(k->fd);
                    k->state = C_FREE;
                    continue;
                }
                k->state = C_OPEN;
                k->opened = t;
                st->connected++;
                st->open_now++;
                if (st->open_now > st->open_max) st->open_max = st->open_now;
                struct epoll_event ne = {.events = EPOLLRDHUP | (kind == 1 ? EPOLLOUT : 0) |
                                                   (kind == 0 || kind == 2 ? EPOLLIN : 0),
                                         .data.u32 = i};
                epoll_ctl(ep, EPOLL_CTL_MOD, k->fd, &ne);
                if (kind != 1) continue;
                ev = EPOLLOUT;
            }
            if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) closed = 1;
            if (!closed && (ev & EPOLLIN)) {
                char sink[4096];
                ssize_t r = read(k->fd, sink, sizeof sink);
                if (r == 0 || (r < 0 && errno != EAGAIN)) closed = 1;
            }
            if (!closed && kind == 1 && (ev & EPOLLOUT)) {
                /* Never read; write requests until the socket pushes back. */
                for (int rounds = 0; rounds < 16; rounds++) {
                    int l = 0, nm = 0;
                    while (l < (int)sizeof wbuf - 600) {
                        char ip[16];
                        struct in_addr a;
                        src_ip(k->src, &a, ip);
                        l += snprintf(wbuf + l, sizeof wbuf - l, opt_msg_fmt, user, target_str, ip,
                                      run_id, w, (unsigned long long)reqno, ip,
                                      (unsigned long long)reqno, user, target_str, run_id, w,
                                      (unsigned long long)reqno, ip);
                        reqno++;
                        nm++;
                        if (l > 4096) break;
                    }
                    ssize_t r = write(k->fd, wbuf, l);
                    if (r < 0) {
                        if (errno != EAGAIN) { closed = 1; st->write_fail++; }
                        break;
                    }
                    st->bytes += r;
                    st->requests += (uint64_t)nm * r / l; /* whole requests, about */
                    if (r < l) break; /* partial: the rest of this batch is lost; fine for a flood */
                }
            }
            if (closed) {
                double life = t - k->opened;
                st->closed_by_peer++;
                st->life_sum += life;
                if (life < 1) st->life_lt1++;
                else if (life < 5) st->life_1_5++;
                else if (life < 15) st->life_5_15++;
                else if (life < 60) st->life_15_60++;
                else st->life_gt60++;
                st->open_now--;
                epoll_ctl(ep, EPOLL_CTL_DEL, k->fd, NULL);
                close(k->fd);
                k->state = C_FREE;
            }
        }
        if (kind == 2 && t - last_tick >= 1.0) {
            /* Slowloris: one more byte of the message on every open connection. */
            last_tick = t;
            for (int i = 0; i < mine; i++) {
                if (c[i].state != C_OPEN) continue;
                char b = slow_msg[c[i].pos % slow_len];
                if (write(c[i].fd, &b, 1) == 1) { c[i].pos++; st->bytes++; }
            }
        }
    }
    for (int i = 0; i < mine; i++)
        if (c[i].state == C_OPEN) st->still_open_end++;
    /* Exit without closing: the kernel closes every socket at once. */
}

static int run_tcp(void) {
    struct tstats *st = mmap(NULL, sizeof(struct tstats) * workers, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (st == MAP_FAILED) die("mmap");
    memset(st, 0, sizeof(struct tstats) * workers);
    pid_t *pids = calloc(workers, sizeof(pid_t));
    for (int w = 0; w < workers; w++) {
        pids[w] = fork();
        if (pids[w] == 0) {
            tcp_worker(w, &st[w]);
            _exit(0);
        }
    }
    double start = now_s();
    int alive = workers;
    while (alive) {
        usleep(200000);
        int status;
        while (waitpid(-1, &status, WNOHANG) > 0) alive--;
        static double last;
        double t = now_s();
        if (t - last >= 1.0) {
            last = t;
            uint64_t open = 0, att = 0, cl = 0, req = 0;
            for (int w = 0; w < workers; w++) {
                open += st[w].open_now;
                att += st[w].attempts;
                cl += st[w].closed_by_peer;
                req += st[w].requests;
            }
            fprintf(stderr, "[flood %s] t=%.0f attempts=%llu open=%llu closed_by_peer=%llu requests=%llu\n",
                    mode, t - start, (unsigned long long)att, (unsigned long long)open,
                    (unsigned long long)cl, (unsigned long long)req);
        }
    }
    struct tstats s = {0};
    for (int w = 0; w < workers; w++) {
        s.attempts += st[w].attempts;
        s.connected += st[w].connected;
        s.connect_fail += st[w].connect_fail;
        s.refused += st[w].refused;
        s.addrnotavail += st[w].addrnotavail;
        s.closed_by_peer += st[w].closed_by_peer;
        s.life_lt1 += st[w].life_lt1;
        s.life_1_5 += st[w].life_1_5;
        s.life_5_15 += st[w].life_5_15;
        s.life_15_60 += st[w].life_15_60;
        s.life_gt60 += st[w].life_gt60;
        s.life_sum += st[w].life_sum;
        s.requests += st[w].requests;
        s.bytes += st[w].bytes;
        s.write_fail += st[w].write_fail;
        s.open_max += st[w].open_max; /* sum of per-worker peaks: an upper bound */
        s.still_open_end += st[w].still_open_end;
    }
    rep_open();
    rep("sources", nsrc);
    rep("secs", secs);
    rep("connections_target", conns);
    rep("connect_attempts", s.attempts);
    rep("connect_rate_achieved", s.attempts / secs);
    rep("connected", s.connected);
    rep("connect_failed", s.connect_fail);
    rep("connect_refused", s.refused);
    rep("connect_addrnotavail", s.addrnotavail);
    rep("closed_by_peer", s.closed_by_peer);
    rep("closed_within_1s", s.life_lt1);
    rep("closed_1_5s", s.life_1_5);
    rep("closed_5_15s", s.life_5_15);
    rep("closed_15_60s", s.life_15_60);
    rep("closed_after_60s", s.life_gt60);
    rep("mean_life_s", s.closed_by_peer ? s.life_sum / s.closed_by_peer : 0);
    rep("open_max", s.open_max);
    rep("open_at_end", s.still_open_end);
    rep("requests_sent", s.requests);
    rep("bytes_sent", s.bytes);
    rep("write_failed", s.write_fail);
    rep_close();
    return 0;
}

/* ================================================================== main */
int main(int argc, char **argv) {
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: %s invite|noack|options|tcp-idle|tcp-noread|tcp-slow [-t IP:PORT] "
                        "[-s IP] [-n N] [-r RATE] [-d SECS] [-g SECS] [-v VIAS] [-H MS] [-k MS] [-c CONNS] "
                        "[-w WORKERS] [-u USER] [-o FILE]\n", argv[0]);
        return 2;
    }
    mode = argv[1];
    inet_pton(AF_INET, "127.0.0.2", &first_src);
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "t:s:n:r:d:g:v:H:k:c:w:u:o:")) != -1) {
        switch (opt) {
        case 't': snprintf(target_str, sizeof target_str, "%s", optarg); break;
        case 's': if (inet_pton(AF_INET, optarg, &first_src) != 1) { fprintf(stderr, "bad -s\n"); return 2; } break;
        case 'n': nsrc = atoi(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'd': secs = atof(optarg); break;
        case 'g': grace = atof(optarg); break;
        case 'v': vias = atoi(optarg); break;
        case 'H': hold_ms = atoi(optarg); break;
        case 'k': keepalive_ms = atoi(optarg); break;
        case 'c': conns = atoi(optarg); break;
        case 'w': workers = atoi(optarg); break;
        case 'u': user = optarg; break;
        case 'o': outfile = optarg; break;
        default: return 2;
        }
    }
    char host[32];
    snprintf(host, sizeof host, "%s", target_str);
    char *colon = strchr(host, ':');
    if (!colon) { fprintf(stderr, "-t wants IP:PORT\n"); return 2; }
    *colon = 0;
    target.sin_family = AF_INET;
    target.sin_port = htons(atoi(colon + 1));
    if (inet_pton(AF_INET, host, &target.sin_addr) != 1 || (ntohl(target.sin_addr.s_addr) >> 24) != 127 ||
        (ntohl(first_src.s_addr) >> 24) != 127 || ((ntohl(first_src.s_addr) + nsrc - 1) >> 24) != 127) {
        fprintf(stderr, "target and sources must be in 127.0.0.0/8 (loopback only)\n");
        return 2;
    }
    if (nsrc < 1 || nsrc > MAXSRC || (!strncmp(mode, "tcp-", 4) && nsrc > MAXTCPSRC) || workers < 1 ||
        vias < 1 || vias > 2000) {
        fprintf(stderr, "bad -n, -w or -v\n");
        return 2;
    }
    run_id = getpid();
    if (!strcmp(mode, "invite") || !strcmp(mode, "noack") || !strcmp(mode, "options")) return run_udp();
    if (!strncmp(mode, "tcp-", 4)) return run_tcp();
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
