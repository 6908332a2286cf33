/* The paced sender of tools/testing/loadgen.py, in C: the same events, schedule,
 * arguments and JSON report, at a fraction of the CPU (sendmmsg, no
 * interpreter). On a 2-core machine the Python sender's ~4 us per event is a
 * third of a core at 150k events/s, taken from the daemon under test.
 * Built on demand by tools/testing/loadgen.py (cc -O2); see that file for the rules
 * (--keys N: each event also carries "user":"u<seq % N>", last; --format
 * json|gelf|statsd).
 *
 * --format gelf: zlib's deflate costs ~6 us for a 170-byte message (the trees
 * are built per block), as much as the daemon's whole path, so the stream is
 * written here: the zlib header 78 9c, one final block of dynamic Huffman
 * codes holding literals only, then the Adler-32. The code lengths come from
 * the template's byte frequencies (every digit included) and the block's
 * header (HLIT, HDIST, HCLEN, the code-length code, the run-length-coded
 * lengths) is made once; an event costs its bit packing and checksum. A
 * dynamic block, not a fixed one, because that is what zlib sends for such
 * messages and what the daemon pays to inflate (the tables built per message). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define TEMPLATE "{\"seq\":%lld,\"sent_us\":%lld,\"host\":\"web-01\",\"method\":\"GET\"," \
                 "\"path\":\"/api/v1/orders\",\"status\":200,\"dur_ms\":12.5}"
/* --keys N: TEMPLATE with ,"user":"u<seq % N>" before the closing brace */
#define KEYED_TEMPLATE "{\"seq\":%lld,\"sent_us\":%lld,\"host\":\"web-01\",\"method\":\"GET\"," \
                       "\"path\":\"/api/v1/orders\",\"status\":200,\"dur_ms\":12.5,\"user\":\"u%lld\"}"

/* --format gelf and statsd: tools/testing/loadgen.py's GELF_TEMPLATE and STATSD_LINE */
#define GELF_TEMPLATE "{\"version\":\"1.1\",\"host\":\"web-01\",\"short_message\":" \
                      "\"GET /api/v1/orders 200\",\"timestamp\":%lld.%06lld,\"level\":6," \
                      "\"_seq\":%lld,\"_logger\":\"app.access\",\"_dur_ms\":12.5}"
#define STATSD_LINE "bench.requests:%lld|c|#env:prod,route:/api"
#define BUF 512

/* ------------------------------------------------ the GELF zlib stream */
struct bits { unsigned char *p; uint64_t acc; int n; };

static void put(struct bits *b, uint32_t v, int n) {  /* LSB first, as deflate packs */
    b->acc |= (uint64_t)v << b->n;
    b->n += n;
    while (b->n >= 8) { *b->p++ = (unsigned char)b->acc; b->acc >>= 8; b->n -= 8; }
}

/* Huffman code lengths of n symbols (0 for frequency 0), none over limit:
 * while the tree is too deep, the frequencies are flattened and it is rebuilt. */
static void huffman_lengths(const unsigned *freq_in, int n, int limit, unsigned char *len) {
    unsigned freq[320], weight[640];
    int parent[640], alive[640];
    for (int i = 0; i < n; i++) freq[i] = freq_in[i];
    for (;;) {
        int nodes = n, live = 0, deepest = 0;
        for (int i = 0; i < n; i++) { weight[i] = freq[i]; parent[i] = -1; alive[i] = freq[i] > 0; live += alive[i]; }
        while (live > 1) {  /* join the two lightest live nodes */
            int a = -1, b = -1;
            for (int i = 0; i < nodes; i++) {
                if (!alive[i]) continue;
                if (a < 0 || weight[i] < weight[a]) { b = a; a = i; }
                else if (b < 0 || weight[i] < weight[b]) b = i;
            }
            weight[nodes] = weight[a] + weight[b]; parent[nodes] = -1; alive[nodes] = 1;
            parent[a] = parent[b] = nodes; alive[a] = alive[b] = 0;
            nodes++; live--;
        }
        for (int i = 0; i < n; i++) {
            int d = 0;
            for (int k = i; parent[k] >= 0; k = parent[k]) d++;
            len[i] = (unsigned char)(freq[i] ? (d ? d : 1) : 0);
            if (len[i] > deepest) deepest = len[i];
        }
        if (deepest <= limit) return;
        for (int i = 0; i < n; i++) if (freq[i]) freq[i] = freq[i] / 2 + 1;
    }
}

/* Canonical codes (RFC 1951 3.2.2), bit-reversed for LSB-first packing. */
static void canonical(const unsigned char *len, int n, uint32_t *code) {
    int count[16] = {0};
    uint32_t next[16];
    for (int i = 0; i < n; i++) count[len[i]]++;
    count[0] = 0;
    uint32_t c = 0;
    for (int b = 1; b < 16; b++) { c = (c + count[b - 1]) << 1; next[b] = c; }
    for (int i = 0; i < n; i++) {
        if (!len[i]) { code[i] = 0; continue; }
        uint32_t v = next[len[i]]++, r = 0;
        for (int k = 0; k < len[i]; k++) { r = (r << 1) | (v & 1); v >>= 1; }
        code[i] = r;
    }
}

static unsigned char lit_len[257];
static uint32_t lit_code[257];
static unsigned char gelf_head[512];  /* the block header's whole bytes ... */
static uint64_t gelf_head_tail;       /* ... and its last bits */
static int gelf_head_len, gelf_head_bits;

static void gelf_init(void) {
    char sample[BUF];
    unsigned freq[257] = {0};
    int n = snprintf(sample, sizeof sample, GELF_TEMPLATE, 1700000000LL, 123456LL, 1234567LL);
    for (int i = 0; i < n; i++) freq[(unsigned char)sample[i]]++;
    for (int c = '0'; c <= '9'; c++) freq[c]++;  /* any digit may come */
    freq[256] = 1;                                /* end of block */
    huffman_lengths(freq, 257, 15, lit_len);
    canonical(lit_len, 257, lit_code);
    /* The 257 literal/length code lengths and one distance code length (0:
     * literals only), run-length coded: 17 and 18 for runs of zeros. */
    int sym[300], extra[300], ns = 0;
    unsigned char all[258];
    memcpy(all, lit_len, 257);
    all[257] = 0;
    for (int i = 0; i < 258;) {
        int run = 0;
        while (i + run < 258 && !all[i + run] && run < 138) run++;
        if (run >= 11) { sym[ns] = 18; extra[ns++] = run - 11; i += run; }
        else if (run >= 3) { sym[ns] = 17; extra[ns++] = run - 3; i += run; }
        else { sym[ns] = all[i]; extra[ns++] = 0; i++; }
    }
    unsigned cl_freq[19] = {0};
    unsigned char cl_len[19];
    uint32_t cl_code[19];
    for (int i = 0; i < ns; i++) cl_freq[sym[i]]++;
    huffman_lengths(cl_freq, 19, 7, cl_len);
    canonical(cl_len, 19, cl_code);
    static const int order[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    int hclen = 19;
    while (hclen > 4 && !cl_len[order[hclen - 1]]) hclen--;
    struct bits b = {gelf_head, 0, 0};
    put(&b, 1, 1);          /* BFINAL */
    put(&b, 2, 2);          /* BTYPE: dynamic Huffman */
    put(&b, 0, 5);          /* HLIT: 257 literal/length codes */
    put(&b, 0, 5);          /* HDIST: 1 distance code */
    put(&b, hclen - 4, 4);  /* HCLEN */
    for (int i = 0; i < hclen; i++) put(&b, cl_len[order[i]], 3);
    for (int i = 0; i < ns; i++) {
        put(&b, cl_code[sym[i]], cl_len[sym[i]]);
        if (sym[i] == 17) put(&b, extra[i], 3);
        else if (sym[i] == 18) put(&b, extra[i], 7);
    }
    gelf_head_len = (int)(b.p - gelf_head);
    gelf_head_tail = b.acc;
    gelf_head_bits = b.n;
}

/* The zlib stream of the n bytes at in (ASCII), into out; its length. */
static size_t gelf_zlib(const unsigned char *in, int n, unsigned char *out) {
    out[0] = 0x78; out[1] = 0x9c;  /* deflate, 32 KiB window, default level */
    memcpy(out + 2, gelf_head, gelf_head_len);
    struct bits b = {out + 2 + gelf_head_len, gelf_head_tail, gelf_head_bits};
    uint32_t s1 = 1, s2 = 0;  /* Adler-32: n < 5552, so one modulo at the end */
    for (int i = 0; i < n; i++) {
        put(&b, lit_code[in[i]], lit_len[in[i]]);
        s1 += in[i];
        s2 += s1;
    }
    put(&b, lit_code[256], lit_len[256]);
    if (b.n) put(&b, 0, 8 - b.n);
    s1 %= 65521; s2 %= 65521;
    uint32_t adler = s2 << 16 | s1;
    unsigned char *p = b.p;
    p[0] = adler >> 24; p[1] = adler >> 16; p[2] = adler >> 8; p[3] = adler;
    return (size_t)(p + 4 - out);
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_s(double s) {
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    const char *udp = NULL, *unix_path = NULL;
    double rate = 0, seconds = 0, slot_ms = 1.0, start_at = 0;
    long long first = 0, index = 0, count = 1, keys = 0;
    const char *format = "json";
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--udp")) udp = v;
        else if (!strcmp(k, "--unix")) unix_path = v;
        else if (!strcmp(k, "--rate")) rate = atof(v);
        else if (!strcmp(k, "--seconds")) seconds = atof(v);
        else if (!strcmp(k, "--first-seq")) first = atoll(v);
        else if (!strcmp(k, "--index")) index = atoll(v);
        else if (!strcmp(k, "--count")) count = atoll(v);
        else if (!strcmp(k, "--slot-ms")) slot_ms = atof(v);
        else if (!strcmp(k, "--start-at")) start_at = atof(v);
        else if (!strcmp(k, "--keys")) keys = atoll(v);
        else if (!strcmp(k, "--format")) format = v;
        else { fprintf(stderr, "loadgen: unknown argument %s\n", k); return 2; }
    }
    int gelf = !strcmp(format, "gelf"), statsd = !strcmp(format, "statsd");
    if (rate <= 0 || seconds <= 0 || (!udp == !unix_path) || keys < 0 ||
        (!gelf && !statsd && strcmp(format, "json")) || (keys && (gelf || statsd))) {
        fprintf(stderr, "loadgen: need --rate, --seconds and one of --udp/--unix (--keys >= 0, "
                        "json only; --format json|gelf|statsd)\n");
        return 2;
    }
    if (gelf) gelf_init();
    int fd;
    if (unix_path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        strncpy(sa.sun_path, unix_path, sizeof sa.sun_path - 1);
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) { perror("connect"); return 1; }
    } else {
        char host[256];
        const char *colon = strrchr(udp, ':');
        if (!colon || (size_t)(colon - udp) >= sizeof host) { fprintf(stderr, "bad --udp\n"); return 2; }
        memcpy(host, udp, colon - udp);
        host[colon - udp] = 0;
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
        if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) { fprintf(stderr, "bad --udp host\n"); return 2; }
        fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) { perror("connect"); return 1; }
    }
    long long total = (long long)(rate * seconds), attempted = 0, ok = 0, eagain = 0, enobufs = 0, other = 0;
    long long seq = first + index;
    static char bufs[BATCH][BUF];
    char event[BUF];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    if (start_at > 0) sleep_s(start_at - mono());
    double t0 = mono(), wall_t0 = wall(), cpu0 = cpu(), deadline = t0 + seconds * 2 + 5, max_lag = 0;
    double slot = slot_ms / 1000.0;
    while (attempted < total) {
        double now = mono();
        if (now > deadline) break;
        long long due_total = (long long)((now - t0) * rate) + 1;
        if (due_total > total) due_total = total;
        long long due = due_total - attempted;
        if (due <= 0) { sleep_s(t0 + (attempted + 1) / rate - now); continue; }
        double lag = now - (t0 + attempted / rate);
        if (lag > max_lag) max_lag = lag;
        long long sent_us = (long long)((wall_t0 + (now - t0)) * 1e6);
        while (due > 0) {
            int n = due < BATCH ? (int)due : BATCH;
            for (int i = 0; i < n; i++) {
                if (gelf) {
                    int n = snprintf(event, sizeof event, GELF_TEMPLATE, sent_us / 1000000,
                                     sent_us % 1000000, seq);
                    iov[i].iov_len = gelf_zlib((unsigned char *)event, n, (unsigned char *)bufs[i]);
                } else if (statsd) {
                    iov[i].iov_len = snprintf(bufs[i], sizeof bufs[i], STATSD_LINE, seq);
                } else {
                    iov[i].iov_len = keys
                        ? snprintf(bufs[i], sizeof bufs[i], KEYED_TEMPLATE, seq, sent_us, seq % keys)
                        : snprintf(bufs[i], sizeof bufs[i], TEMPLATE, seq, sent_us);
                }
                seq += count;
            }
            int done = 0;
            while (done < n) {  /* each failed message is counted once, never retried */
                int r = sendmmsg(fd, msgs + done, n - done, 0);
                if (r > 0) { ok += r; done += r; continue; }
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) eagain++;
                else if (errno == ENOBUFS) enobufs++;
                else other++;
                done++;
            }
            due -= n;
            attempted += n;
        }
        sleep_s(t0 + attempted / rate + slot - mono());
    }
    double elapsed = mono() - t0;
    printf("{\"attempted\": %lld, \"ok\": %lld, \"eagain\": %lld, \"errors\": {", attempted, ok, eagain);
    int comma = 0;
    if (enobufs) { printf("\"ENOBUFS\": %lld", enobufs); comma = 1; }
    if (other) printf("%s\"other\": %lld", comma ? ", " : "", other);
    printf("}, \"elapsed_s\": %.6f, \"start_wall\": %.6f, \"max_lag_ms\": %.3f, \"cpu_s\": %.6f, "
           "\"completed\": %s, \"pid\": %d}\n",
           elapsed, wall_t0, max_lag * 1000, cpu() - cpu0, attempted == total ? "true" : "false",
           (int)getpid());
    close(fd);
    return 0;
}
