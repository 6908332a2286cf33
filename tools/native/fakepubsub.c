/* A FAKE Pub/Sub Publish server for `make bench`, in C: tools/testing/fakepubsub.py
 * explains why it exists and builds this on first use (cc -O2 -pthread).
 *
 * Why C: behind grpcio's Python server every Publish request cost ~0.6 ms of
 * CPU (~14 thread switches a request on our 2-core VMs), ~0.8 us a message;
 * this costs a few hundredths of that, so the run measures the daemon.
 *
 * What it is: just enough HTTP/2 (h2c, prior knowledge, as gRPC speaks to an
 * insecure channel) to answer unary gRPC calls: SETTINGS and PING acks,
 * flow-control credit, one DATA + trailers reply per stream. Request headers
 * are skipped unread (no HPACK decoder): the call is told apart by its body,
 * which is enough for the four calls the bench makes:
 *   - a PublishRequest (has field 2, messages): one message ID per message
 *     ("0".."n-1", unique within a request only: ingest never reads them),
 *     every message checked as a tools/testing/loadgen.py event (below);
 *   - GetTopicRequest / Topic (field 1 only: the daemon's startup check, idle
 *     probe, --create-topic): echoed, since GetTopicRequest.topic and
 *     Topic.name are both field 1, so every topic exists;
 *   - JSON (starts with '{'): the bench's Report, {"first_seq":F,
 *     "expected":E} (and for the metadata run "keys", "attributes",
 *     "route_topic", "routed": below); answered with the counts since the
 *     last report, which are then reset, and E sequence numbers from F are
 *     checked from then on.
 * Anything else is INVALID_ARGUMENT. It stores nothing and is no Pub/Sub.
 *
 * The check, inline (a few hundredths of a us a message): the data must be byte for byte the
 * event loadgen sends for its seq and sent_us; distinct seqs are kept in a
 * bitmap, with the latency from sent_us to this request's arrival.
 *
 * The metadata run (tools/testing/verify.py's Metadata; a Report with "keys": N > 0):
 * events carry ,"user":"u<seq % N>" last (loadgen --keys); each distinct
 * event's message must have that user as its ordering key (field 5), exactly
 * the attributes of "attributes" ("k=v,k=v": map entries, field 2, in any
 * order), and have been published to the topic whose ID is "route_topic"
 * exactly when its user is "routed"; any other is counted in wrong_metadata.
 * Names are plain text (no JSON escapes), as the bench makes them.
 *
 * The dialect runs (a Report with "format": "gelf" or "statsd": events sent
 * with tools.loadgen --format): each message is checked as the event ingest
 * publishes for that format instead, the inflated GELF object (seq from
 * "_seq", the send time from "timestamp") or the JSON event ingest writes for
 * a statsd line (seq from "value"; no send time, so no latency).
 *
 * --answer-delay-ms=N holds every Publish answer N ms after its request
 * arrived (a nearby region's round trip), the connection still reading and
 * answering everything else meanwhile: a per-connection answerer thread
 * sends the held answers in arrival order (one delay for all, so the queue
 * is in due order). Without it each answer is written at once. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define OUR_MAX_FRAME (1 << 20)          /* SETTINGS_MAX_FRAME_SIZE we accept */
#define OUR_WINDOW (1 << 30)             /* stream and connection receive windows */
#define MAX_REQUEST (16 << 20)           /* as ingest's channel: above Pub/Sub's 10 MB */
#define QUANTILES 1000                   /* the report's latency quantiles, 0.1 % steps */
#define EVENT_HEAD "{\"seq\":"
#define EVENT_MID ",\"sent_us\":"
#define EVENT_TAIL ",\"host\":\"web-01\",\"method\":\"GET\",\"path\":\"/api/v1/orders\"," \
                   "\"status\":200,\"dur_ms\":12.5}"
#define EVENT_USER ",\"user\":\"u"    /* --keys: EVENT_TAIL less its '}', this, the number, "} */
/* tools/testing/loadgen.py's GELF_TEMPLATE and STATSD_EVENT, around their numbers */
#define GELF_HEAD "{\"version\":\"1.1\",\"host\":\"web-01\",\"short_message\":" \
                  "\"GET /api/v1/orders 200\",\"timestamp\":"
#define GELF_SEQ ",\"level\":6,\"_seq\":"
#define GELF_TAIL ",\"_logger\":\"app.access\",\"_dur_ms\":12.5}"
#define STATSD_HEAD "{\"metric\":\"bench.requests\",\"value\":"
#define STATSD_TAIL ",\"type\":\"c\",\"tags\":{\"env\":\"prod\",\"route\":\"/api\"}}"
enum { FORMAT_JSON, FORMAT_GELF, FORMAT_STATSD };
#define MAX_ATTRS 16
static long long answer_delay_us;  /* --answer-delay-ms, in us; 0: answer at once */
#define NAME_MAX_LEN 256

/* ------------------------------------------------------------ the ledger */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    long long requests, messages, probes, distinct, duplicates, foreign, last_us;
    long long first_seq, expected, n_lat;  /* n_lat: distinct events with a send time */
    int format;                            /* FORMAT_*: how the events were sent */
    unsigned char *seen;
    long long *lat;
    /* the metadata run's expectations (keys > 0) and findings */
    long long keys, wrong_metadata, routed;
    char route_topic[NAME_MAX_LEN], routed_user[NAME_MAX_LEN];
    int n_attrs;
    char attr_key[MAX_ATTRS][NAME_MAX_LEN], attr_value[MAX_ATTRS][NAME_MAX_LEN];
} L;

/* What a message carries besides its data, and where it was published. */
struct meta {
    const unsigned char *key; size_t key_len;   /* ordering key (field 5) */
    const unsigned char *attrs; size_t attrs_len;  /* the message, to walk its map entries */
    int to_route;                                /* published to L.route_topic */
};

static long long now_us(void) {  /* wall clock: compared with the senders' stamps */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A canonical decimal (what printf("%lld") makes) at p, or -1. */
static long long number(const unsigned char *p, size_t n, size_t *used) {
    size_t i = 0;
    long long v = 0;
    while (i < n && i < 19 && p[i] >= '0' && p[i] <= '9') v = v * 10 + (p[i++] - '0');
    if (i == 0 || (i > 1 && p[0] == '0')) return -1;
    *used = i;
    return v;
}

static int varint(const unsigned char **p, const unsigned char *end, uint64_t *out);

/* Whether the n bytes at d begin with the text lit; then *used is its length. */
static int starts(const unsigned char *d, size_t n, const char *lit, size_t *used) {
    size_t k = strlen(lit);
    if (n < k || memcmp(d, lit, k)) return 0;
    *used = k;
    return 1;
}

/* seq and send time (-1: none) of a GELF or statsd event, or -1. */
static long long dialect_event(const unsigned char *d, size_t n, long long *sent) {
    size_t at = 0, k;
    long long seq, secs, micros = 0;
    *sent = -1;
    if (L.format == FORMAT_STATSD) {
        if (!starts(d, n, STATSD_HEAD, &k) || (seq = number(d + k, n - k, &at)) < 0) return -1;
        at += k;
        return n - at == strlen(STATSD_TAIL) && !memcmp(d + at, STATSD_TAIL, n - at) ? seq : -1;
    }
    if (!starts(d, n, GELF_HEAD, &k) || (secs = number(d + k, n - k, &at)) < 0) return -1;
    at += k;
    if (n - at < 7 || d[at] != '.') return -1;
    for (int i = 1; i <= 6; i++) {  /* exactly six digits, leading zeros kept */
        if (d[at + i] < '0' || d[at + i] > '9') return -1;
        micros = micros * 10 + (d[at + i] - '0');
    }
    at += 7;
    if (!starts(d + at, n - at, GELF_SEQ, &k)) return -1;
    at += k;
    if ((seq = number(d + at, n - at, &k)) < 0) return -1;
    at += k;
    if (n - at != strlen(GELF_TAIL) || memcmp(d + at, GELF_TAIL, n - at)) return -1;
    *sent = secs * 1000000 + micros;
    return seq;
}

/* Whether a message's attributes are exactly L's: each map entry (field 2:
 * key = 1, value = 2) one of them, and as many. */
static int attributes_match(const unsigned char *q, const unsigned char *end) {
    int found = 0;
    while (q < end) {
        uint64_t tag, len;
        if (varint(&q, end, &tag) || (tag & 7) != 2 || varint(&q, end, &len) || len > (uint64_t)(end - q)) return 0;
        const unsigned char *e = q, *e_end = q + len, *k = NULL, *v = NULL;
        size_t k_len = 0, v_len = 0;
        q += len;
        if (tag >> 3 != 2) continue;
        while (e < e_end) {
            uint64_t t, l;
            if (varint(&e, e_end, &t) || (t & 7) != 2 || varint(&e, e_end, &l) || l > (uint64_t)(e_end - e)) return 0;
            if (t >> 3 == 1) { k = e; k_len = l; } else if (t >> 3 == 2) { v = e; v_len = l; }
            e += l;
        }
        int ok = 0;
        for (int i = 0; i < L.n_attrs && !ok; i++)
            ok = k && v && strlen(L.attr_key[i]) == k_len && !memcmp(L.attr_key[i], k, k_len) &&
                 strlen(L.attr_value[i]) == v_len && !memcmp(L.attr_value[i], v, v_len);
        if (!ok) return 0;
        found++;
    }
    return found == L.n_attrs;
}

/* Under mu. One message's data, checked as a loadgen event; with L.keys, the
 * --keys variant, and its metadata (m) as the top of this file says. */
static void check_event(const unsigned char *d, size_t n, long long arrived, const struct meta *m) {
    size_t a, b, c = 0, head = sizeof EVENT_HEAD - 1, mid = sizeof EVENT_MID - 1, tail = sizeof EVENT_TAIL - 1;
    size_t user = sizeof EVENT_USER - 1;
    long long seq, sent, u = 0;
    const unsigned char *t = d;  /* json --keys: the user's number */
    size_t rest;
    if (L.format != FORMAT_JSON) {
        if ((seq = dialect_event(d, n, &sent)) < 0) goto foreign;
        goto check;
    }
    if (n < head || memcmp(d, EVENT_HEAD, head)) goto foreign;
    if ((seq = number(d + head, n - head, &a)) < 0) goto foreign;
    if (n < head + a + mid || memcmp(d + head + a, EVENT_MID, mid)) goto foreign;
    if ((sent = number(d + head + a + mid, n - head - a - mid, &b)) < 0) goto foreign;
    t = d + head + a + mid + b;
    rest = n - head - a - mid - b;
    if (!L.keys) {
        if (rest != tail || memcmp(t, EVENT_TAIL, tail)) goto foreign;
    } else {  /* EVENT_TAIL less '}', ,"user":"u, seq % keys, "} */
        if (rest < tail - 1 + user || memcmp(t, EVENT_TAIL, tail - 1) || memcmp(t + tail - 1, EVENT_USER, user))
            goto foreign;
        t += tail - 1 + user;
        rest -= tail - 1 + user;
        if ((u = number(t, rest, &c)) < 0 || u != seq % L.keys || rest != c + 2 || memcmp(t + c, "\"}", 2))
            goto foreign;
    }
check:;
    long long i = seq - L.first_seq;
    if (i < 0 || i >= L.expected) goto foreign;
    if (L.seen[i]) { L.duplicates++; return; }
    L.seen[i] = 1;
    L.distinct++;
    if (sent >= 0) L.lat[L.n_lat++] = arrived - sent;
    if (L.keys && L.format == FORMAT_JSON) {  /* the user's text is t[0..c), "u" before it */
        int routed = strlen(L.routed_user) == c + 1 && L.routed_user[0] == 'u' && !memcmp(L.routed_user + 1, t, c);
        L.routed += m->to_route;
        if (m->key_len != c + 1 || m->key[0] != 'u' || memcmp(m->key + 1, t, c) || routed != m->to_route ||
            !attributes_match(m->attrs, m->attrs + m->attrs_len))
            L.wrong_metadata++;
    }
    return;
foreign:
    L.foreign++;
}

static int cmp_ll(const void *x, const void *y) {
    long long a = *(const long long *)x, b = *(const long long *)y;
    return (a > b) - (a < b);
}

/* ------------------------------------------------------------ protobuf */
static int varint(const unsigned char **p, const unsigned char *end, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        unsigned char c = *(*p)++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) { *out = v; return 0; }
    }
    return -1;
}

/* Walk a message's fields; for each field 2 (LEN) call fn on its bytes.
 * Returns the number of field-2 entries, or -1 for a malformed message. */
static long long walk(const unsigned char *p, const unsigned char *end, int want,
                      void (*fn)(const unsigned char *, size_t, void *), void *arg) {
    long long found = 0;
    while (p < end) {
        uint64_t key, v;
        if (varint(&p, end, &key)) return -1;
        switch (key & 7) {
        case 0: if (varint(&p, end, &v)) return -1; break;
        case 1: if (end - p < 8) return -1; p += 8; break;
        case 5: if (end - p < 4) return -1; p += 4; break;
        case 2:
            if (varint(&p, end, &v) || v > (uint64_t)(end - p)) return -1;
            if ((int)(key >> 3) == want) { found++; if (fn) fn(p, v, arg); }
            p += v;
            break;
        default: return -1;
        }
    }
    return found;
}

struct publish { long long arrived; int bad, to_route; };

/* One PubsubMessage (every field of which is LEN: data 1, attributes 2,
 * ordering_key 5): its data is checked, and with L.keys its metadata. */
static void data_field(const unsigned char *p, size_t n, void *arg) {
    struct publish *pub = arg;
    const unsigned char *q = p, *end = p + n, *data = q;
    uint64_t data_len = 0;
    struct meta m = {(const unsigned char *)"", 0, p, n, pub->to_route};
    while (q < end) {
        uint64_t key, v;
        if (varint(&q, end, &key) || (key & 7) != 2 || varint(&q, end, &v) || v > (uint64_t)(end - q)) {
            pub->bad = 1;
            return;
        }
        if ((key >> 3) == 1) { data = q; data_len = v; }
        else if ((key >> 3) == 5) { m.key = q; m.key_len = v; }
        q += v;
    }
    check_event(data, data_len, pub->arrived, &m);
}

/* Whether a PublishRequest's topic (field 1) has the ID L.route_topic. */
static int to_route(const unsigned char *p, const unsigned char *end) {
    size_t want = strlen(L.route_topic);
    while (want && p < end) {
        uint64_t key, v;
        if (varint(&p, end, &key)) return 0;
        if ((key & 7) != 2) return 0;  /* a PublishRequest has LEN fields only */
        if (varint(&p, end, &v) || v > (uint64_t)(end - p)) return 0;
        if ((key >> 3) == 1) {
            const unsigned char *slash = p + v;
            while (slash > p && slash[-1] != '/') slash--;
            return (size_t)(p + v - slash) == want && !memcmp(slash, L.route_topic, want);
        }
        p += v;
    }
    return 0;
}

/* ------------------------------------------------------------ HTTP/2 */
struct stream { uint32_t id; unsigned char *buf; size_t len, cap; struct stream *next; };
struct pending { uint32_t id; unsigned char *body; size_t len; struct pending *next; };
/* An answer held until due (--answer-delay-ms). */
struct held { long long due; uint32_t id; unsigned char *body; size_t len; struct held *next; };
struct conn {
    int fd;
    /* With --answer-delay-ms two threads write: wmu orders every write and
     * guards the held queue, the send window and the pending replies. */
    pthread_mutex_t wmu;
    pthread_cond_t wcv;
    struct held *held, **held_tail;
    int closing, has_answerer;
    pthread_t answerer;
    unsigned char *in;
    size_t in_len, in_cap;
    long long send_window, consumed;
    size_t peer_max_frame;
    struct stream *streams;
    struct pending *pending, **pending_tail;
};

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        p += w; n -= (size_t)w;
    }
    return 0;
}

static size_t frame_header(unsigned char *h, size_t len, int type, int flags, uint32_t id) {
    h[0] = len >> 16; h[1] = len >> 8; h[2] = len; h[3] = type; h[4] = flags;
    h[5] = id >> 24; h[6] = id >> 16; h[7] = id >> 8; h[8] = id;
    return 9;
}

static int send_frame(struct conn *c, int type, int flags, uint32_t id, const void *p, size_t n) {
    unsigned char h[9];
    frame_header(h, n, type, flags, id);
    if (write_all(c->fd, h, 9)) return -1;
    return n ? write_all(c->fd, p, n) : 0;
}

/* :status 200 (static index 8), content-type application/grpc (literal, name index 31) */
static const unsigned char RESPONSE_HEADERS[] = "\x88\x0f\x10\x10" "application/grpc";
#define RESPONSE_HEADERS_LEN (sizeof RESPONSE_HEADERS - 1)

/* A unary reply: headers, the message, trailers; one write. */
static int reply(struct conn *c, uint32_t id, const unsigned char *msg, size_t n) {
    size_t cap = 64 + n + 9 * (n / c->peer_max_frame + 2), at = 0;
    unsigned char *out = malloc(cap);
    if (!out) return -1;
    at += frame_header(out + at, RESPONSE_HEADERS_LEN, 1, 0x4, id);
    memcpy(out + at, RESPONSE_HEADERS, RESPONSE_HEADERS_LEN); at += RESPONSE_HEADERS_LEN;
    unsigned char prefix[5] = {0, n >> 24, n >> 16, n >> 8, n};
    size_t total = n + 5, done = 0;
    while (done < total) {  /* DATA frames no larger than the peer takes */
        size_t chunk = total - done < c->peer_max_frame ? total - done : c->peer_max_frame;
        at += frame_header(out + at, chunk, 0, 0, id);
        for (size_t k = 0; k < chunk; k++, done++)
            out[at++] = done < 5 ? prefix[done] : msg[done - 5];
    }
    static const unsigned char trailers[] = "\x00\x0bgrpc-status\x01" "0";
    at += frame_header(out + at, sizeof trailers - 1, 1, 0x5, id);
    memcpy(out + at, trailers, sizeof trailers - 1); at += sizeof trailers - 1;
    int r = write_all(c->fd, out, at);
    free(out);
    c->send_window -= (long long)total;
    return r;
}

static int reply_error(struct conn *c, uint32_t id, int code) {
    unsigned char block[64];
    size_t n = RESPONSE_HEADERS_LEN;
    memcpy(block, RESPONSE_HEADERS, n);
    n += (size_t)sprintf((char *)block + n, "%c%cgrpc-status%c%d", 0, 11, 1, code);
    return send_frame(c, 1, 0x5, id, block, n);  /* trailers-only: END_STREAM | END_HEADERS */
}

/* Queue a reply until the connection's send window has room for it. */
static int answer(struct conn *c, uint32_t id, unsigned char *msg, size_t n) {
    if (!c->pending && c->send_window >= (long long)n + 5) {
        int r = reply(c, id, msg, n);
        free(msg);
        return r;
    }
    struct pending *p = calloc(1, sizeof *p);
    if (!p) return -1;
    p->id = id; p->body = msg; p->len = n;
    *c->pending_tail = p;
    c->pending_tail = &p->next;
    return 0;
}

static int flush_pending(struct conn *c) {
    while (c->pending && c->send_window >= (long long)c->pending->len + 5) {
        struct pending *p = c->pending;
        c->pending = p->next;
        if (!c->pending) c->pending_tail = &c->pending;
        int r = reply(c, p->id, p->body, p->len);
        free(p->body); free(p);
        if (r) return -1;
    }
    return 0;
}

/* Hold a Publish answer until arrival + answer_delay_us (caller holds wmu). */
static int hold(struct conn *c, uint32_t id, unsigned char *msg, size_t n, long long arrived) {
    struct held *h = calloc(1, sizeof *h);
    if (!h) { free(msg); return -1; }
    h->due = arrived + answer_delay_us; h->id = id; h->body = msg; h->len = n;
    *c->held_tail = h;
    c->held_tail = &h->next;
    pthread_cond_signal(&c->wcv);
    return 0;
}

/* The answerer: sends each held answer when it is due, until the connection closes. */
static void *answer_held(void *arg) {
    struct conn *c = arg;
    pthread_mutex_lock(&c->wmu);
    while (!c->closing) {
        if (!c->held) { pthread_cond_wait(&c->wcv, &c->wmu); continue; }
        long long due = c->held->due;
        if (now_us() < due) {
            struct timespec ts = {due / 1000000, (due % 1000000) * 1000};
            pthread_cond_timedwait(&c->wcv, &c->wmu, &ts);
            continue;
        }
        struct held *h = c->held;
        c->held = h->next;
        if (!c->held) c->held_tail = &c->held;
        int r = answer(c, h->id, h->body, h->len);
        free(h);
        if (r) { shutdown(c->fd, SHUT_RDWR); break; }  /* the reader sees the close */
    }
    pthread_mutex_unlock(&c->wmu);
    return NULL;
}

/* PublishResponse.message_ids (field 1) "0".."n-1": a prefix of one list
 * made at startup (sprintf per ID costs a fifth of the CPU). */
#define MAX_IDS 1000  /* Pub/Sub's per-request message limit; more are made per call */
static unsigned char *all_ids;
static size_t ids_end[MAX_IDS + 1];

static size_t encode_ids(unsigned char *out, long long from, long long to) {
    unsigned char *p = out;
    for (long long i = from; i < to; i++) {
        int k = sprintf((char *)p + 2, "%lld", i);
        p[0] = 0x0a; p[1] = (unsigned char)k;
        p += 2 + k;
    }
    return (size_t)(p - out);
}

static unsigned char *ids_for(long long n, size_t *len) {
    long long cached = n < MAX_IDS ? n : MAX_IDS;
    unsigned char *out = malloc(ids_end[cached] + (size_t)(n - cached) * 22 + 1);
    if (!out) return NULL;
    memcpy(out, all_ids, ids_end[cached]);
    *len = ids_end[cached] + encode_ids(out + ids_end[cached], cached, n);
    return out;
}

/* A string member of the Report's JSON ("name": "text", no escapes) into out. */
static void json_text(const char *ask, const char *name, char *out, size_t cap) {
    out[0] = 0;
    const char *at = strstr(ask, name);
    if (!at) return;
    at += strlen(name);
    while (*at == ' ' || *at == ':') at++;
    if (*at++ != '"') return;
    size_t i = 0;
    while (*at && *at != '"' && i + 1 < cap) out[i++] = *at++;
    out[i] = 0;
}

static unsigned char *report(const unsigned char *req, size_t n, size_t *len) {
    char ask[4096] = {0}, attrs[4096];
    memcpy(ask, req, n < sizeof ask - 1 ? n : sizeof ask - 1);
    const char *f = strstr(ask, "\"first_seq\":"), *e = strstr(ask, "\"expected\":");
    const char *k = strstr(ask, "\"keys\":");
    long long first = f ? strtoll(f + 12, NULL, 10) : 0;
    long long expected = e ? strtoll(e + 11, NULL, 10) : 0;
    long long keys = k ? strtoll(k + 7, NULL, 10) : 0;
    double cpu0 = cpu_s();
    pthread_mutex_lock(&mu);
    qsort(L.lat, (size_t)L.n_lat, sizeof *L.lat, cmp_ll);
    size_t cap = 512 + 24 * (QUANTILES + 1);
    char *out = malloc(cap);
    int at = snprintf(out, cap,
                      "{\"requests\": %lld, \"messages\": %lld, \"unchecked\": 0, \"probes\": %lld, "
                      "\"distinct\": %lld, \"duplicates\": %lld, \"foreign\": %lld, \"last_us\": %lld, "
                      "\"metadata_checked\": %s, \"wrong_metadata\": %lld, \"routed\": %lld, "
                      "\"latency_quantiles_us\": [",
                      L.requests, L.messages, L.probes, L.distinct, L.duplicates, L.foreign, L.last_us,
                      L.keys ? "true" : "false", L.wrong_metadata, L.routed);
    if (L.n_lat) {
        for (long long i = 0; i <= QUANTILES; i++) {
            long long k = i < QUANTILES ? i * L.n_lat / QUANTILES : L.n_lat - 1;
            at += snprintf(out + at, cap - at, "%s%lld", i ? ", " : "", L.lat[k]);
        }
    }
    free(L.seen); free(L.lat);
    memset(&L, 0, sizeof L);
    L.first_seq = first;
    L.expected = expected > 0 ? expected : 0;
    L.keys = keys > 0 ? keys : 0;
    json_text(ask, "\"route_topic\"", L.route_topic, sizeof L.route_topic);
    json_text(ask, "\"routed\"", L.routed_user, sizeof L.routed_user);
    json_text(ask, "\"attributes\"", attrs, sizeof attrs);
    char format[16];
    json_text(ask, "\"format\"", format, sizeof format);
    L.format = !strcmp(format, "gelf") ? FORMAT_GELF : !strcmp(format, "statsd") ? FORMAT_STATSD : FORMAT_JSON;
    for (char *save = NULL, *pair = strtok_r(attrs, ",", &save); pair && L.n_attrs < MAX_ATTRS;
         pair = strtok_r(NULL, ",", &save)) {  /* "k=v,k=v" */
        char *eq = strchr(pair, '=');
        if (!eq) continue;
        *eq = 0;
        snprintf(L.attr_key[L.n_attrs], NAME_MAX_LEN, "%s", pair);
        snprintf(L.attr_value[L.n_attrs], NAME_MAX_LEN, "%s", eq + 1);
        L.n_attrs++;
    }
    L.seen = calloc((size_t)L.expected + 1, 1);
    L.lat = malloc(((size_t)L.expected + 1) * sizeof *L.lat);
    pthread_mutex_unlock(&mu);
    at += snprintf(out + at, cap - at, "], \"check_cpu_s\": %.6f}", cpu_s() - cpu0);
    *len = (size_t)at;
    return (unsigned char *)out;
}

/* One complete request body (gRPC length-prefixed) on stream id. */
static int handle(struct conn *c, uint32_t id, const unsigned char *b, size_t n) {
    if (n < 5 || b[0] != 0) return reply_error(c, id, n < 5 ? 3 : 12);  /* compressed: UNIMPLEMENTED */
    uint32_t mlen = (uint32_t)b[1] << 24 | b[2] << 16 | b[3] << 8 | b[4];
    if (mlen != n - 5) return reply_error(c, id, 3);
    const unsigned char *m = b + 5;
    size_t len = 0;
    unsigned char *out;
    if (mlen && m[0] == '{') {
        out = report(m, mlen, &len);
    } else {
        long long arrived = now_us(), count = walk(m, m + mlen, 2, NULL, NULL);
        if (count < 0) return reply_error(c, id, 3);  /* INVALID_ARGUMENT */
        if (count == 0) {  /* GetTopic / CreateTopic: echo (see the top) */
            pthread_mutex_lock(&mu);
            L.probes++;
            pthread_mutex_unlock(&mu);
            out = malloc(mlen + 1);
            if (!out) return -1;
            memcpy(out, m, mlen);
            len = mlen;
        } else {
            struct publish pub = {arrived, 0, 0};
            pthread_mutex_lock(&mu);
            pub.to_route = to_route(m, m + mlen);
            L.requests++;
            L.messages += count;
            if (arrived > L.last_us) L.last_us = arrived;
            walk(m, m + mlen, 2, data_field, &pub);  /* a malformed message: counted, then refused */
            pthread_mutex_unlock(&mu);
            if (pub.bad) return reply_error(c, id, 3);
            out = ids_for(count, &len);
            if (out && answer_delay_us) return hold(c, id, out, len, arrived);
        }
    }
    return out ? answer(c, id, out, len) : -1;
}

static struct stream *stream_for(struct conn *c, uint32_t id, int create) {
    for (struct stream *s = c->streams; s; s = s->next)
        if (s->id == id) return s;
    if (!create) return NULL;
    struct stream *s = calloc(1, sizeof *s);
    if (s) { s->id = id; s->next = c->streams; c->streams = s; }
    return s;
}

static void drop_stream(struct conn *c, uint32_t id) {
    for (struct stream **p = &c->streams; *p; p = &(*p)->next)
        if ((*p)->id == id) {
            struct stream *s = *p;
            *p = s->next;
            free(s->buf); free(s);
            return;
        }
}

static int frame(struct conn *c, int type, int flags, uint32_t id, unsigned char *p, size_t n) {
    switch (type) {
    case 0: {  /* DATA */
        c->consumed += (long long)n;
        size_t pad = 0;
        if (flags & 0x8) { if (!n) return -1; pad = p[0] + 1u; p++; n--; if (pad - 1 > n) return -1; n -= pad - 1; }
        struct stream *s = stream_for(c, id, 0);
        if (!s) return 0;
        if (s->len + n > MAX_REQUEST + 5) { drop_stream(c, id); return reply_error(c, id, 8); }
        if (s->len + n > s->cap) {
            size_t cap = s->cap ? s->cap : 1 << 16;
            while (cap < s->len + n) cap *= 2;
            unsigned char *grown = realloc(s->buf, cap);
            if (!grown) return -1;
            s->buf = grown; s->cap = cap;
        }
        memcpy(s->buf + s->len, p, n);
        s->len += n;
        if (flags & 0x1) {
            int r = handle(c, id, s->buf, s->len);
            drop_stream(c, id);
            return r;
        }
        return 0;
    }
    case 1:  /* HEADERS: a new call; its headers are not read (see the top) */
        if (!stream_for(c, id, 1)) return -1;
        if (flags & 0x1) { drop_stream(c, id); return reply_error(c, id, 3); }
        return 0;
    case 3: drop_stream(c, id); return 0;  /* RST_STREAM */
    case 4:  /* SETTINGS */
        if (flags & 0x1) return 0;
        for (size_t i = 0; i + 6 <= n; i += 6) {
            uint32_t v = (uint32_t)p[i + 2] << 24 | p[i + 3] << 16 | p[i + 4] << 8 | p[i + 5];
            if ((p[i] << 8 | p[i + 1]) == 5) c->peer_max_frame = v;
        }
        return send_frame(c, 4, 0x1, 0, NULL, 0);
    case 6: return (flags & 0x1) ? 0 : send_frame(c, 6, 0x1, 0, p, n);  /* PING: ack */
    case 7: return -1;  /* GOAWAY */
    case 8:  /* WINDOW_UPDATE: only the connection's window can hold a reply back */
        if (id == 0 && n >= 4) {
            c->send_window += (long long)((uint32_t)(p[0] & 0x7f) << 24 | p[1] << 16 | p[2] << 8 | p[3]);
            return flush_pending(c);
        }
        return 0;
    default: return 0;  /* PRIORITY, CONTINUATION, unknown: nothing to do */
    }
}

static void *serve_conn(void *arg) {
    struct conn *c = arg;
    c->pending_tail = &c->pending;
    c->held_tail = &c->held;
    pthread_mutex_init(&c->wmu, NULL);
    pthread_cond_init(&c->wcv, NULL);
    if (answer_delay_us && !pthread_create(&c->answerer, NULL, answer_held, c)) c->has_answerer = 1;
    c->send_window = 65535;
    c->peer_max_frame = 16384;
    c->in_cap = OUR_MAX_FRAME + 9 + (1 << 16);
    c->in = malloc(c->in_cap);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* SETTINGS: INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE; then connection credit. */
    unsigned char settings[12] = {0, 4, OUR_WINDOW >> 24, OUR_WINDOW >> 16 & 0xff, 0, 0,
                                  0, 5, OUR_MAX_FRAME >> 24, OUR_MAX_FRAME >> 16 & 0xff, 0, 0};
    unsigned char credit[4] = {OUR_WINDOW >> 24, OUR_WINDOW >> 16 & 0xff, 0, 0};
    int preface_seen = 0;
    if (!c->in || send_frame(c, 4, 0, 0, settings, sizeof settings) || send_frame(c, 8, 0, 0, credit, 4))
        goto done;
    for (;;) {
        ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        c->in_len += (size_t)r;
        size_t at = 0;
        if (!preface_seen) {
            if (c->in_len < 24) continue;
            if (memcmp(c->in, PREFACE, 24)) break;
            preface_seen = 1;
            at = 24;
        }
        int failed = 0;
        pthread_mutex_lock(&c->wmu);
        while (c->in_len - at >= 9) {
            unsigned char *h = c->in + at;
            size_t len = (size_t)h[0] << 16 | h[1] << 8 | h[2];
            if (len > OUR_MAX_FRAME) { failed = 1; break; }
            if (c->in_len - at < 9 + len) break;
            uint32_t id = ((uint32_t)h[5] << 24 | h[6] << 16 | h[7] << 8 | h[8]) & 0x7fffffff;
            if (frame(c, h[3], h[4], id, h + 9, len)) { failed = 1; break; }
            at += 9 + len;
        }
        if (!failed && c->consumed >= OUR_WINDOW / 4) {  /* hand the credit back in large steps */
            unsigned char inc[4] = {c->consumed >> 24, c->consumed >> 16, c->consumed >> 8, c->consumed};
            failed = send_frame(c, 8, 0, 0, inc, 4) != 0;  /* streams: 1 GiB each, never short */
            c->consumed = 0;
        }
        pthread_mutex_unlock(&c->wmu);
        if (failed) break;
        memmove(c->in, c->in + at, c->in_len - at);
        c->in_len -= at;
    }
done:
    pthread_mutex_lock(&c->wmu);
    c->closing = 1;
    pthread_cond_signal(&c->wcv);
    pthread_mutex_unlock(&c->wmu);
    if (c->has_answerer) pthread_join(c->answerer, NULL);
    while (c->held) { struct held *h = c->held; c->held = h->next; free(h->body); free(h); }
    pthread_mutex_destroy(&c->wmu);
    pthread_cond_destroy(&c->wcv);
    close(c->fd);
    while (c->streams) drop_stream(c, c->streams->id);
    while (c->pending) { struct pending *p = c->pending; c->pending = p->next; free(p->body); free(p); }
    free(c->in);
    free(c);
    return NULL;
}

int main(int argc, char **argv) {
    int port = 0;
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "--port=", 7)) port = atoi(argv[i] + 7);
        else if (!strncmp(argv[i], "--answer-delay-ms=", 18)) answer_delay_us = (long long)(atof(argv[i] + 18) * 1000);
        else if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else { fprintf(stderr, "fakepubsub: unknown argument %s\n", argv[i]); return 2; }
    }
    signal(SIGPIPE, SIG_IGN);  /* a closed connection is a failed write, not our death */
    /* Request buffers (~100 KB to 10 MB) are reused from the heap rather than
     * mmap'd and unmapped per request: page faults would be most of its CPU. */
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 64)) { perror("fakepubsub: bind"); return 1; }
    all_ids = malloc(MAX_IDS * 6 + 1);
    for (int i = 0; i < MAX_IDS; i++) ids_end[i + 1] = ids_end[i] + encode_ids(all_ids + ids_end[i], i, i + 1);
    pthread_mutex_lock(&mu);
    L.seen = calloc(1, 1);
    L.lat = malloc(sizeof *L.lat);
    pthread_mutex_unlock(&mu);
    printf("fake Pub/Sub (C) ready on 127.0.0.1:%d\n", port);
    fflush(stdout);
    for (;;) {
        int cfd = accept(fd, NULL, NULL);
        if (cfd < 0) { if (errno == EINTR) continue; perror("fakepubsub: accept"); return 1; }
        struct conn *c = calloc(1, sizeof *c);
        pthread_t t;
        if (!c) { close(cfd); continue; }
        c->fd = cfd;
        if (pthread_create(&t, NULL, serve_conn, c)) { close(cfd); free(c); continue; }
        pthread_detach(t);
    }
}
