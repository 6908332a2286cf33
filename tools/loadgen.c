/* The paced sender of tools/loadgen.py, in C: the same events, schedule,
 * arguments and JSON report, at a fraction of the CPU (sendmmsg, no
 * interpreter). On a 2-core machine the Python sender's ~4 us per event was a
 * third of a core at 150k events/s, taken from the daemon under test.
 * Built on demand by tools/loadgen.py (cc -O2); see that file for the rules
 * (--keys N: each event also carries "user":"u<seq % N>", last). */
#define _GNU_SOURCE
#include <errno.h>
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
        else { fprintf(stderr, "loadgen: unknown argument %s\n", k); return 2; }
    }
    if (rate <= 0 || seconds <= 0 || (!udp == !unix_path) || keys < 0) {
        fprintf(stderr, "loadgen: need --rate, --seconds and one of --udp/--unix (--keys >= 0)\n");
        return 2;
    }
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
    static char bufs[BATCH][192];
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
                iov[i].iov_len = keys
                    ? snprintf(bufs[i], sizeof bufs[i], KEYED_TEMPLATE, seq, sent_us, seq % keys)
                    : snprintf(bufs[i], sizeof bufs[i], TEMPLATE, seq, sent_us);
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
