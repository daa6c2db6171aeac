/*
 * bench_tls: TLS client-authenticated handshakes per second, and hardware commands per
 * handshake, for an X.509 identity whose private key is
 *   1. in the encrypted software store (the alias key is PKCS#8),
 *   2. in the TPM ([x509] backend = tpm, on a swtpm the benchmark starts),
 *   3. on a SoftHSM2 token ([x509] backend = pkcs11, a fresh token the benchmark makes),
 *   4. as the peer: a key the tpm2-openssl provider made in the same swtpm.
 * Every row uses the same in-process server (TLS 1.2-1.3, requires and verifies the
 * client certificate; tests/integration/tls_harness.h) and the same client code: one client
 * SSL_CTX per row, set up the SDK's way (PEM_read_bio_PrivateKey + SSL_CTX_use_PrivateKey,
 * PEM_read_bio_X509_AUX + SSL_CTX_use_certificate, in the default library context). Our
 * rows are provisioned through the public admin API with a configuration file and a store
 * of their own, and read their certificate and key through the SDK's X.509 table after
 * hsm_client_x509_init(); the device's self-signed certificate is re-issued by the test CA
 * and imported, as a CA-signed certificate would be.
 *
 * TPM commands are counted for our key and the peer's at the same place: a proxy between
 * the TCTI and swtpm's ports that counts TPM command frames (tag | size | code | ...), one
 * per command whatever the connections; ours are also counted at our TCTI
 * (provhsm_tpm_commands_total) as a cross-check. PKCS#11 calls are counted by the library
 * (provhsm_p11_calls_total). Each row: setup (table, key decoding), one warm-up handshake
 * (counted separately), then N timed handshakes. The SoftHSM2 target (median <= 1.3 x the
 * software key's) is judged on a further run in which the two keys' clients take turns,
 * handshake by handshake, so that both see the same load of a shared machine.
 * The peer runs last, in processes of its own (forks of this one, so the server and its
 * software keys stay out of tpm2-openssl's reach): each loads tpm2-openssl into the default
 * library context next to the default provider, with one of two default property queries
 * (its documentation's, and the one docs/sdk-contract gives), on a restarted swtpm: first
 * on the bare swtpm, where it fails (it needs a resource manager), then behind tpm2-abrmd,
 * which the benchmark starts on a D-Bus bus of its own and points at the proxy, so the
 * commands tpm2-abrmd sends for the peer (context saves and loads included) are counted.
 * Each variant prints its library context, the order in which it loads the providers and
 * its default properties, set after both are loaded.
 *
 * Usage: bench_tls [N]   (handshakes per row, default 200). Needs swtpm and SoftHSM2; the
 * peer needs the tpm2-openssl module and the openssl command, and behind tpm2-abrmd also
 * tpm2-abrmd, dbus-daemon and the tabrmd TCTI (else those rows say they were not run).
 * Exit 0 when every row of ours ran (targets are printed, not enforced: timings move on a
 * shared machine); the peer's failures are reported, not fatal. SIGINT, SIGTERM and SIGHUP
 * stop the daemons and remove the temporary directories before the benchmark exits. Not
 * a ctest test.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <tss2/tss2_tpm2_types.h>

#include "abrmd_fixture.h"
#include "bench_stats.h"
#include "hsm_client_data.h"
#include "p11_wrap.h"
#include "provhsm/provhsm.h"
#include "softhsm_fixture.h"
#include "swtpm_fixture.h"
#include "testutil.h"
#include "tls_harness.h"
#include "tpm_esys.h"

#define DEFAULT_HANDSHAKES 200
#define TOKEN_LABEL        "bench-tls"
#define MAX_FRAME          8192 /* larger than any TPM 2.0 command or response */
#define CODE_BASE          0x100u
#define CODE_SLOTS         0x100u /* command codes 0x100..0x1ff, TPM2_CC_FIRST..LAST */

/* What the SDK's hsm_client_data.c defines. */
int initialize_hsm_system(void)
{
    return hsm_client_x509_init();
}

void deinitialize_hsm_system(void)
{
    hsm_client_x509_deinit();
}

/* ---- the TPM command counting proxy ------------------------------------------------ */

/*
 * Listens on two consecutive loopback ports like swtpm (commands, then its control
 * channel) and relays every connection to swtpm's matching port. On the command port it
 * relays one command and one response at a time and counts the commands by code; the
 * control channel (locality, reset) is relayed byte for byte and not counted.
 */
typedef struct frame_proxy {
    int upstream_port; /* swtpm's command port; its control port is the next one */
    int port;          /* ours, the same way */
    int listen_fd[2];
    pthread_t acceptor[2];
    int acceptor_running[2];
    atomic_int stopping;
    pthread_mutex_t lock; /* guards active */
    pthread_cond_t idle;
    int active;
} frame_proxy;

static frame_proxy proxy = {
    .listen_fd = {-1, -1}, .lock = PTHREAD_MUTEX_INITIALIZER, .idle = PTHREAD_COND_INITIALIZER};

/* What the proxy counted; in memory shared with the peer's process (see run_peer). */
typedef struct proxy_counts {
    atomic_ullong commands;
    atomic_uint by_code[CODE_SLOTS];
} proxy_counts;

static proxy_counts *counted;

typedef struct relay {
    int client_fd;
    int control;
} relay;

/*
 * Waits until fd is readable; -1 when the proxy stops or, unless `patient`, nothing comes
 * for 10 s. A client may stay idle between commands as long as it likes (tpm2-abrmd keeps
 * one connection for its whole life); a frame once begun, or a response, must come.
 */
static int wait_readable(int fd, int patient)
{
    for (int waited = 0; (patient || waited < 10000) && !atomic_load(&proxy.stopping);
         waited += 100) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, 100);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
    return -1;
}

static int read_full(int fd, uint8_t *buf, size_t len, int patient)
{
    for (size_t got = 0; got < len;) {
        if (wait_readable(fd, patient && got == 0) != 0)
            return -1;
        ssize_t n = read(fd, buf + got, len - got);
        if (n <= 0 && !(n < 0 && errno == EINTR))
            return -1;
        got += n > 0 ? (size_t)n : 0;
    }
    return 0;
}

static int write_full(int fd, const uint8_t *buf, size_t len)
{
    for (size_t put = 0; put < len;) {
        ssize_t n = write(fd, buf + put, len - put);
        if (n <= 0 && !(n < 0 && errno == EINTR))
            return -1;
        put += n > 0 ? (size_t)n : 0;
    }
    return 0;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/*
 * One TPM frame (command or response) from `from` to `to`; its code through *code.
 * patient: the first byte may take any time (a command; see wait_readable).
 */
static int pass_frame(int from, int to, uint32_t *code, int patient)
{
    uint8_t frame[MAX_FRAME];
    if (read_full(from, frame, 10, patient) != 0)
        return -1;
    uint32_t size = be32(frame + 2);
    if (size < 10 || size > sizeof(frame) || read_full(from, frame + 10, size - 10, 0) != 0)
        return -1;
    *code = be32(frame + 6);
    return write_full(to, frame, size);
}

static void relay_commands(int client_fd, int tpm_fd)
{
    uint32_t code, rc;
    while (pass_frame(client_fd, tpm_fd, &code, 1) == 0) {
        atomic_fetch_add(&counted->commands, 1);
        if (code >= CODE_BASE && code < CODE_BASE + CODE_SLOTS)
            atomic_fetch_add(&counted->by_code[code - CODE_BASE], 1);
        if (pass_frame(tpm_fd, client_fd, &rc, 0) != 0)
            return;
    }
}

static void relay_bytes(int a, int b)
{
    uint8_t buf[4096];
    while (!atomic_load(&proxy.stopping)) {
        struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
        if (poll(p, 2, 100) < 0 && errno != EINTR)
            return;
        for (int i = 0; i < 2; i++) {
            if (p[i].revents == 0)
                continue;
            ssize_t n = read(p[i].fd, buf, sizeof(buf));
            if (n <= 0 || write_full(p[1 - i].fd, buf, (size_t)n) != 0)
                return;
        }
    }
}

static int connect_loopback(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static void *serve_relay(void *arg)
{
    relay *r = arg;
    int upstream = connect_loopback(proxy.upstream_port + r->control);
    if (upstream >= 0) {
        if (r->control)
            relay_bytes(r->client_fd, upstream);
        else
            relay_commands(r->client_fd, upstream);
        close(upstream);
    }
    close(r->client_fd);
    free(r);
    pthread_mutex_lock(&proxy.lock);
    proxy.active--;
    pthread_cond_broadcast(&proxy.idle);
    pthread_mutex_unlock(&proxy.lock);
    return NULL;
}

/* arg: NULL for the command port, anything else for the control port */
// cppcheck-suppress constParameter ; a pthread start routine
static void *accept_loop(void *arg)
{
    int control = arg != NULL;
    while (!atomic_load(&proxy.stopping)) {
        struct pollfd p = {.fd = proxy.listen_fd[control], .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        int fd = accept(proxy.listen_fd[control], NULL, NULL);
        relay *r = fd >= 0 ? malloc(sizeof(*r)) : NULL;
        if (r == NULL) {
            if (fd >= 0)
                close(fd);
            continue;
        }
        *r = (relay){.client_fd = fd, .control = control};
        pthread_t thread;
        pthread_mutex_lock(&proxy.lock);
        proxy.active++;
        pthread_mutex_unlock(&proxy.lock);
        if (pthread_create(&thread, NULL, serve_relay, r) == 0) {
            pthread_detach(thread);
            continue;
        }
        close(fd);
        free(r);
        pthread_mutex_lock(&proxy.lock);
        proxy.active--;
        pthread_mutex_unlock(&proxy.lock);
    }
    return NULL;
}

/*
 * A listening loopback socket. SO_REUSEADDR: a run leaves tens of thousands of closed
 * handshake connections in TIME_WAIT on loopback ports, and without it those ports cannot
 * be listened on for a minute (the next run then found no two free consecutive ports).
 */
static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int reuse = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof(reuse)) != 0) {
        close(fd);
        fd = -1;
    }
    if (fd >= 0 && (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, 16) != 0)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Two free consecutive ports: an ephemeral one, and the next one when it is free too. */
static int listen_pair(void)
{
    for (int attempt = 0; attempt < 50; attempt++) {
        int first = listen_on(0);
        struct sockaddr_in addr;
        socklen_t len = sizeof(addr);
        if (first < 0 || getsockname(first, (struct sockaddr *)&addr, &len) != 0) {
            if (first >= 0)
                close(first);
            return -1;
        }
        int port = ntohs(addr.sin_port);
        int second = port < 65535 ? listen_on(port + 1) : -1;
        if (second >= 0) {
            proxy.listen_fd[0] = first;
            proxy.listen_fd[1] = second;
            proxy.port = port;
            return 0;
        }
        close(first);
    }
    return -1;
}

static void proxy_stop(void)
{
    atomic_store(&proxy.stopping, 1);
    for (int i = 0; i < 2; i++) {
        if (proxy.acceptor_running[i])
            pthread_join(proxy.acceptor[i], NULL);
        proxy.acceptor_running[i] = 0;
        if (proxy.listen_fd[i] >= 0)
            close(proxy.listen_fd[i]);
        proxy.listen_fd[i] = -1;
    }
    pthread_mutex_lock(&proxy.lock);
    while (proxy.active > 0)
        pthread_cond_wait(&proxy.idle, &proxy.lock);
    pthread_mutex_unlock(&proxy.lock);
}

static int proxy_start(int upstream_port)
{
    static int control_marker;
    proxy.upstream_port = upstream_port;
    if (listen_pair() != 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        if (pthread_create(&proxy.acceptor[i], NULL, accept_loop, i ? &control_marker : NULL) !=
            0) {
            proxy_stop();
            return -1;
        }
        proxy.acceptor_running[i] = 1;
    }
    return 0;
}

/* ---- counters ---------------------------------------------------------------------- */

typedef struct hw_counts {
    uint64_t frames; /* TPM commands seen by the proxy */
    uint64_t tpm;    /* TPM commands sent by provhsm's TCTI */
    uint64_t p11;    /* PKCS#11 calls made by provhsm */
    unsigned by_code[CODE_SLOTS];
} hw_counts;

static void counts_now(hw_counts *c)
{
    c->frames = atomic_load(&counted->commands);
    c->tpm = provhsm_tpm_commands_total();
    c->p11 = provhsm_p11_calls_total();
    for (unsigned i = 0; i < CODE_SLOTS; i++)
        c->by_code[i] = atomic_load(&counted->by_code[i]);
}

/* after - before, in place in *after */
static void counts_since(hw_counts *after, const hw_counts *before)
{
    after->frames -= before->frames;
    after->tpm -= before->tpm;
    after->p11 -= before->p11;
    for (unsigned i = 0; i < CODE_SLOTS; i++)
        after->by_code[i] -= before->by_code[i];
}

static const struct {
    uint32_t code;
    const char *name;
} code_names[] = {
    {TPM2_CC_EvictControl, "EvictControl"},
    {TPM2_CC_CreatePrimary, "CreatePrimary"},
    {TPM2_CC_SequenceComplete, "SequenceComplete"},
    {TPM2_CC_Create, "Create"},
    {TPM2_CC_ECDH_ZGen, "ECDH_ZGen"},
    {TPM2_CC_HMAC, "HMAC"},
    {TPM2_CC_Load, "Load"},
    {TPM2_CC_SequenceUpdate, "SequenceUpdate"},
    {TPM2_CC_Sign, "Sign"},
    {TPM2_CC_Unseal, "Unseal"},
    {TPM2_CC_ContextLoad, "ContextLoad"},
    {TPM2_CC_ContextSave, "ContextSave"},
    {TPM2_CC_ECDH_KeyGen, "ECDH_KeyGen"},
    {TPM2_CC_FlushContext, "FlushContext"},
    {TPM2_CC_LoadExternal, "LoadExternal"},
    {TPM2_CC_ReadPublic, "ReadPublic"},
    {TPM2_CC_StartAuthSession, "StartAuthSession"},
    {TPM2_CC_VerifySignature, "VerifySignature"},
    {TPM2_CC_ECC_Parameters, "ECC_Parameters"},
    {TPM2_CC_GetCapability, "GetCapability"},
    {TPM2_CC_GetRandom, "GetRandom"},
    {TPM2_CC_Hash, "Hash"},
    {TPM2_CC_HashSequenceStart, "HashSequenceStart"},
    {TPM2_CC_TestParms, "TestParms"},
    {TPM2_CC_CreateLoaded, "CreateLoaded"},
};

static void print_codes(const char *indent, const hw_counts *c, unsigned per)
{
    printf("%s", indent);
    int any = 0;
    for (unsigned i = 0; i < CODE_SLOTS; i++) {
        if (c->by_code[i] == 0)
            continue;
        const char *name = NULL;
        for (size_t j = 0; j < sizeof(code_names) / sizeof(code_names[0]); j++)
            if (code_names[j].code == CODE_BASE + i)
                name = code_names[j].name;
        char unnamed[16];
        snprintf(unnamed, sizeof(unnamed), "0x%03x", CODE_BASE + i);
        if (per == 1)
            printf("%s%s %u", any ? ", " : "", name != NULL ? name : unnamed, c->by_code[i]);
        else
            printf("%s%s %.2f", any ? ", " : "", name != NULL ? name : unnamed,
                   (double)c->by_code[i] / per);
        any = 1;
    }
    printf("%s\n", any ? "" : "none");
}

/* ---- rows --------------------------------------------------------------------------- */

typedef enum counter { COUNT_NONE, COUNT_TPM, COUNT_P11 } counter;

typedef struct row {
    const char *name;
    int tls_version;
    counter unit; /* what "hardware commands" means for this row */
    int ours;     /* a failure of ours makes the run fail */
    int ran, ok;
    char err[768];
    double median, p90, per_second;
    hw_counts setup, first, steady; /* steady: over the N timed handshakes */
} row;

static uint64_t row_count(const row *r, const hw_counts *c)
{
    switch (r->unit) {
    case COUNT_TPM:
        return c->frames;
    case COUNT_P11:
        return c->p11;
    default:
        return c->frames + c->p11;
    }
}

static struct {
    unsigned n;
    double *samples;
    char dir[64];
    provhsm_test_swtpm swtpm;
    provhsm_test_softhsm softhsm;
    tls_ca *ca;
    tls_server *srv;
    char tcti[128]; /* swtpm through the proxy */
    /* the software row's credentials, for the handshakes with tpm2-openssl in the process */
    char *software_cert, *software_key;
    uint64_t peer_keygen_frames[2]; /* by peer_transport */
    char tpm2_module[512];
    char abrmd_not_run[256];  /* why the rows behind tpm2-abrmd did not run */
    provhsm_test_abrmd abrmd; /* the bus and tpm2-abrmd, in dir */
    pid_t peer_pid;           /* 0 when not running */
    int in_peer_process;
    int hsm_initialised;
    /* the software key and the SoftHSM2 key with their handshakes alternating */
    struct {
        int ran, ok;
        double software_median, softhsm_median;
        char err[768];
    } pair;
} B;

/*
 * The default properties the peer runs with: A, tpm2-openssl's documentation's way to
 * prefer it while keeping digests and ciphers in software; B, the query that only keeps
 * its digests, ciphers and random numbers out (the SDK contract's notes).
 */
#define PEER_QUERY_A "?provider=tpm2,tpm2.digest!=yes,tpm2.cipher!=yes"
#define PEER_QUERY_B "?tpm2.digest=no,?tpm2.cipher=no,?tpm2.rand=no"
#define PEER_ROWS    3 /* its key with TLS 1.3, with TLS 1.2, our software key beside it */

/*
 * How the peer reaches swtpm: directly (through the proxy), or through tpm2-abrmd, the
 * resource manager tpm2-openssl is made for, which itself talks to swtpm through the
 * proxy, so its context saves and loads are counted too.
 */
typedef enum peer_transport { PEER_BARE, PEER_ABRMD } peer_transport;

/*
 * One way of running the peer: the providers are loaded into the default library context
 * in this order, and then the default properties are set. The order decides which of two
 * equally good implementations OpenSSL fetches (tpm2's ECDSA or the default provider's,
 * which has only the public half of a TPM key), but only among providers not yet active:
 * the peer's process is a fork of this one, whose default provider has served OpenSSL
 * since it started. So loading tpm2 first means doing it in a new library context made
 * the thread's default (what the SDK's calls with no library context then use), as in a
 * process where OpenSSL has done nothing yet.
 */
typedef struct peer_variant {
    peer_transport transport;
    int tpm2_first; /* 1: a new default library context, tpm2 loaded before default */
    const char *query;
    const char *names[PEER_ROWS];
} peer_variant;

#define PEER_VARIANTS 5
static const peer_variant peer_variants[PEER_VARIANTS] = {
    {PEER_BARE,
     0,
     PEER_QUERY_A,
     {"peer tpm2-openssl (query A)", "peer tpm2-openssl (query A)",
      "software EC P-256 + tpm2-openssl (query A)"}},
    {PEER_BARE,
     0,
     PEER_QUERY_B,
     {"peer tpm2-openssl (query B)", "peer tpm2-openssl (query B)",
      "software EC P-256 + tpm2-openssl (query B)"}},
    {PEER_ABRMD,
     0,
     PEER_QUERY_A,
     {"peer tpm2-openssl behind tpm2-abrmd (query A)",
      "peer tpm2-openssl behind tpm2-abrmd (query A)",
      "software EC P-256 + tpm2-openssl/abrmd (query A)"}},
    {PEER_ABRMD,
     0,
     PEER_QUERY_B,
     {"peer tpm2-openssl behind tpm2-abrmd (query B)",
      "peer tpm2-openssl behind tpm2-abrmd (query B)",
      "software EC P-256 + tpm2-openssl/abrmd (query B)"}},
    {PEER_ABRMD,
     1,
     PEER_QUERY_B,
     {"peer tpm2-openssl behind tpm2-abrmd (query B, tpm2 first)",
      "peer tpm2-openssl behind tpm2-abrmd (query B, tpm2 first)",
      "software EC P-256 + tpm2-openssl/abrmd (B, tpm2 first)"}},
};

/* Shared with the peer's processes (a file mapping in the temporary directory). */
typedef struct shared_state {
    proxy_counts counts;
    row peer[PEER_VARIANTS][PEER_ROWS];
    uint64_t load_frames[PEER_VARIANTS];
    uint64_t abrmd_start_frames[PEER_VARIANTS]; /* tpm2-abrmd's start, before the process */
} shared_state;

static shared_state *shared;

/*
 * Setup (from `since`, which the caller took before reading the credentials) through
 * tls_client_new, one warm-up handshake, then N timed handshakes. 0 when all succeeded.
 */
static int measure(row *r, const char *cert, const char *key, const hw_counts *since)
{
    hw_counts t0, t1;
    r->ran = 1;
    tls_client *cl = tls_client_new(B.srv, cert, key, r->tls_version, r->err, sizeof(r->err));
    counts_now(&r->setup);
    counts_since(&r->setup, since);
    if (cl == NULL)
        return -1;
    counts_now(&t0);
    int rc = tls_client_handshake(cl, r->err, sizeof(r->err));
    counts_now(&r->first);
    counts_since(&r->first, &t0);
    unsigned long verified = tls_server_verified_handshakes(B.srv);
    counts_now(&t1);
    double total = 0;
    for (unsigned i = 0; rc == 0 && i < B.n; i++) {
        double start = bench_now_us();
        rc = tls_client_handshake(cl, r->err, sizeof(r->err));
        B.samples[i] = bench_now_us() - start;
        total += B.samples[i];
        if (rc != 0) {
            char where[64];
            snprintf(where, sizeof(where), " (handshake %u of %u)", i + 1, B.n);
            strncat(r->err, where, sizeof(r->err) - strlen(r->err) - 1);
        }
    }
    counts_now(&r->steady);
    counts_since(&r->steady, &t1);
    tls_client_free(cl);
    if (rc != 0)
        return -1;
    /* the server's count lives in this process only (the peer's is a copy) */
    if (!B.in_peer_process && tls_server_verified_handshakes(B.srv) - verified != B.n) {
        snprintf(r->err, sizeof(r->err), "the server verified %lu client certificates, not %u",
                 tls_server_verified_handshakes(B.srv) - verified, B.n);
        return -1;
    }
    bench_stats(B.samples, (int)B.n, &r->median, &r->p90);
    r->per_second = total > 0 ? 1e6 * B.n / total : 0;
    r->ok = 1;
    return 0;
}

/*
 * The software key's client and another one taking turns, N handshakes each after a
 * warm-up each, so that both see the same moments of a shared machine's load: the
 * SoftHSM2 target compares their medians.
 */
static void measure_pair(const char *cert, const char *key)
{
    tls_client *soft = NULL, *other = NULL;
    double *other_samples = malloc(sizeof(double) * B.n);
    B.pair.ran = 1;
    soft = tls_client_new(B.srv, B.software_cert, B.software_key, TLS1_3_VERSION, B.pair.err,
                          sizeof(B.pair.err));
    if (soft != NULL)
        other = tls_client_new(B.srv, cert, key, TLS1_3_VERSION, B.pair.err, sizeof(B.pair.err));
    int rc = other_samples != NULL && other != NULL ? 0 : -1;
    if (rc == 0)
        rc = tls_client_handshake(soft, B.pair.err, sizeof(B.pair.err)) != 0 ||
             tls_client_handshake(other, B.pair.err, sizeof(B.pair.err)) != 0;
    for (unsigned i = 0; rc == 0 && i < B.n; i++) {
        double t0 = bench_now_us();
        rc = tls_client_handshake(soft, B.pair.err, sizeof(B.pair.err));
        double t1 = bench_now_us();
        if (rc == 0)
            rc = tls_client_handshake(other, B.pair.err, sizeof(B.pair.err));
        B.samples[i] = t1 - t0;
        other_samples[i] = bench_now_us() - t1;
    }
    if (rc == 0) {
        double p90;
        bench_stats(B.samples, (int)B.n, &B.pair.software_median, &p90);
        bench_stats(other_samples, (int)B.n, &B.pair.softhsm_median, &p90);
        B.pair.ok = 1;
    }
    tls_client_free(soft);
    tls_client_free(other);
    free(other_samples);
}

/* ---- our rows: provisioned through the admin API, read through the SDK's table ------ */

static int write_config(const char *name, const char *sections, char *path, size_t len)
{
    snprintf(path, len, "%s/%s.conf", B.dir, name);
    int rc =
        provhsm_test_config_use(path, "[store]\npath = %s/store-%s\n%s", B.dir, name, sections);
    if (rc == 0)
        setenv("PROVHSM_CONFIG", path, 1);
    return rc;
}

/*
 * The product's flow: a store, a self-signed identity made by x509 generate, and the
 * CA's certificate for the same key imported over it (the server trusts the CA only).
 */
static int provision(row *r, const char *name, const char *sections)
{
    char path[200], *self_signed = NULL, *leaf = NULL;
    const char *step = "the configuration";
    int rc = -1;
    if (write_config(name, sections, path, sizeof(path)) != 0)
        goto out;
    step = "provhsm_store_init";
    if (provhsm_store_init() != PROVHSM_OK)
        goto out;
    step = "provhsm_x509_generate";
    if (provhsm_x509_generate("bench-tls-device", PROVHSM_KEY_EC_P256, 30, 0, &self_signed) !=
        PROVHSM_OK)
        goto out;
    step = "issuing the CA's certificate";
    if (tls_ca_issue_from_cert(B.ca, self_signed, &leaf) != 0)
        goto out;
    step = "provhsm_x509_import";
    if (provhsm_x509_import(leaf, NULL, NULL) != PROVHSM_OK)
        goto out;
    rc = 0;
out:
    if (rc != 0)
        snprintf(r->err, sizeof(r->err), "%s failed (see the log above)", step);
    free(self_signed);
    free(leaf);
    return rc;
}

/* One or two rows (TLS 1.3, then 1.2 with the same identity) through the SDK's table. */
static int run_ours(row *rows, int count, const char *name, const char *sections, int keep,
                    int pair)
{
    const HSM_CLIENT_X509_INTERFACE *x = hsm_client_x509_interface();
    if (provision(&rows[0], name, sections) != 0) {
        rows[0].ran = 1;
        return -1;
    }
    hw_counts since;
    counts_now(&since);
    HSM_CLIENT_HANDLE h = x->hsm_client_x509_create();
    char *cert = h != NULL ? x->hsm_client_get_cert(h) : NULL;
    char *key = h != NULL ? x->hsm_client_get_key(h) : NULL;
    int rc = 0;
    if (cert == NULL || key == NULL) {
        snprintf(rows[0].err, sizeof(rows[0].err), "the SDK's X.509 table gave no %s",
                 h == NULL ? "handle" : "certificate or key");
        rows[0].ran = 1;
        rc = -1;
    }
    for (int i = 0; rc == 0 && i < count; i++) {
        if (i > 0)
            counts_now(&since); /* the next row's setup: its own client */
        rc = measure(&rows[i], cert, key, &since);
    }
    if (pair && rc == 0 && B.software_cert != NULL)
        measure_pair(cert, key);
    if (h != NULL)
        x->hsm_client_x509_destroy(h);
    if (keep && rc == 0) {
        B.software_cert = cert;
        B.software_key = key;
    } else {
        free(cert);
        provhsm_free_secret(key); /* the software alias key is the private key */
    }
    return rc;
}

/* ---- the peer: tpm2-openssl on the same swtpm -------------------------------------- */

/* Set when a stop signal came: nothing more is started (see cleanup_on_signal). */
static atomic_int stop_requested;

/* Runs argv with output to `log`; 0 when it exits with 0. */
static int run_logged(char *const argv[], const char *log)
{
    if (atomic_load(&stop_requested))
        return -1;
    pid_t pid = provhsm_test_spawn_logged(argv, log);
    if (pid < 0)
        return -1;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static const char *transport_name(peer_transport t)
{
    return t == PEER_BARE ? "bare" : "abrmd";
}

/*
 * The peer's key, made by the openssl command with the tpm2 provider (key generation
 * asked of tpm2 explicitly) on the TCTI in TPM2OPENSSL_TCTI, its public half written out,
 * and a certificate for it from the CA. *key_out: the "TSS2 PRIVATE KEY" PEM,
 * *cert_out: the leaf.
 */
static int make_peer_key(row *r, peer_transport t, char **key_out, char **cert_out)
{
    char key[128], pub[128], log[128];
    snprintf(key, sizeof(key), "%s/peer-%s.key", B.dir, transport_name(t));
    snprintf(pub, sizeof(pub), "%s/peer-%s.pub", B.dir, transport_name(t));
    snprintf(log, sizeof(log), "%s/openssl-%s.log", B.dir, transport_name(t));
    char *genpkey[] = {"openssl",  "genpkey",     "-provider",     "tpm2",       "-provider",
                       "default",  "-propquery",  "provider=tpm2", "-algorithm", "EC",
                       "-pkeyopt", "group:P-256", "-out",          key,          NULL};
    hw_counts t0;
    counts_now(&t0);
    int rc = run_logged(genpkey, log);
    if (rc == 0) {
        char *pkey[] = {"openssl", "pkey", "-provider", "tpm2", "-provider", "default",
                        "-in",     key,    "-pubout",   "-out", pub,         NULL};
        rc = run_logged(pkey, log);
    }
    B.peer_keygen_frames[t] = atomic_load(&counted->commands) - t0.frames;
    if (rc != 0) {
        snprintf(r->err, sizeof(r->err), "making the key with openssl genpkey/pkey failed");
        provhsm_test_append_log(r->err, sizeof(r->err), log);
        return -1;
    }
    *key_out = provhsm_test_read_text(key);
    FILE *f = fopen(pub, "r");
    EVP_PKEY *pk = f != NULL ? PEM_read_PUBKEY(f, NULL, NULL, NULL) : NULL;
    if (f != NULL)
        fclose(f);
    rc = *key_out != NULL && strstr(*key_out, "BEGIN TSS2 PRIVATE KEY") != NULL && pk != NULL &&
                 tls_ca_issue(B.ca, pk, "bench-tls-tpm2-openssl", cert_out) == 0
             ? 0
             : -1;
    EVP_PKEY_free(pk);
    if (rc != 0)
        snprintf(r->err, sizeof(r->err), "the tpm2 provider's key or its certificate is unusable");
    return rc;
}

static int tpm2_module_present(void)
{
    const char *dir = OPENSSL_info(OPENSSL_INFO_MODULES_DIR);
    const char *env = getenv("OPENSSL_MODULES");
    snprintf(B.tpm2_module, sizeof(B.tpm2_module), "%s/tpm2.so",
             env != NULL && *env != '\0' ? env
             : dir != NULL               ? dir
                                         : "?");
    return access(B.tpm2_module, R_OK) == 0 &&
           provhsm_test_programs_available("openssl", (const char *)NULL);
}

/* ---- tpm2-abrmd on a D-Bus bus of our own (abrmd_fixture.h) ---------------------------- */

/*
 * The same starting state for every variant, as for our rows: swtpm restarted (no
 * transient objects or sessions; the same seeds, so the keys stay valid) and, for
 * tpm2-abrmd, a new tpm2-abrmd on it, whose own start is counted apart in *abrmd_frames.
 */
static int fresh_tpm(peer_transport t, char *why, size_t len, uint64_t *abrmd_frames)
{
    if (atomic_load(&stop_requested))
        return -1;
    provhsm_test_abrmd_stop_daemon(&B.abrmd);
    provhsm_test_swtpm_kill(&B.swtpm);
    if (provhsm_test_swtpm_restart(&B.swtpm) != 0) {
        snprintf(why, len, "swtpm did not restart");
        return -1;
    }
    if (t == PEER_BARE)
        return 0;
    uint64_t before = atomic_load(&counted->commands);
    /* on swtpm through the proxy: its own commands, context saves and loads included, are
     * counted with the peer's */
    int rc = provhsm_test_abrmd_start(&B.abrmd, B.dir, B.tcti, why, len);
    if (abrmd_frames != NULL)
        *abrmd_frames = atomic_load(&counted->commands) - before;
    return rc;
}

/* ---- the peer's processes ------------------------------------------------------------ */

static void openssl_error(row *r, const char *what)
{
    unsigned long e = ERR_get_error();
    snprintf(r->err, sizeof(r->err), "%s: %s", what, e != 0 ? ERR_error_string(e, NULL) : "?");
    ERR_clear_error();
}

/*
 * The peer's process: a copy of this one (the same server keeps running here, in the
 * parent, untouched by tpm2-openssl) that loads tpm2-openssl into the default library
 * context as its users do, on the TCTI in TPM2OPENSSL_TCTI, in the variant's order and
 * with its default properties, then measures the peer's key with TLS 1.3 and 1.2 and our
 * software key beside it. Results go to the shared mapping; it never returns.
 */
static void peer_process(int v, const char *cert, const char *key)
{
    const peer_variant *pv = &peer_variants[v];
    row *rows = shared->peer[v];
    hw_counts t0, since;
    B.in_peer_process = 1;
    alarm(1800); /* every socket has a timeout; this is the last resort */
    counts_now(&t0);
    OSSL_LIB_CTX *fresh = pv->tpm2_first ? OSSL_LIB_CTX_new() : NULL;
    if (pv->tpm2_first && (fresh == NULL || OSSL_LIB_CTX_set0_default(fresh) == NULL)) {
        rows[0].ran = 1;
        openssl_error(&rows[0], "no new library context");
        _exit(1);
    }
    OSSL_PROVIDER *first = OSSL_PROVIDER_load(NULL, pv->tpm2_first ? "tpm2" : "default");
    OSSL_PROVIDER *second = OSSL_PROVIDER_load(NULL, pv->tpm2_first ? "default" : "tpm2");
    if (first == NULL || second == NULL || EVP_set_default_properties(NULL, pv->query) != 1) {
        rows[0].ran = 1;
        openssl_error(&rows[0], "loading the tpm2 provider failed");
        _exit(1);
    }
    shared->load_frames[v] = atomic_load(&counted->commands) - t0.frames;
    counts_now(&since);
    (void)measure(&rows[0], cert, key, &since);
    counts_now(&since);
    (void)measure(&rows[1], cert, key, &since);
    if (B.software_cert != NULL) {
        counts_now(&since);
        (void)measure(&rows[2], B.software_cert, B.software_key, &since);
    }
    _exit(0);
}

static void run_variant(int v, const char *cert, const char *key)
{
    row *rows = shared->peer[v];
    if (atomic_load(&stop_requested))
        return;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        provhsm_test_default_stop_signals();
        peer_process(v, cert, key);
    }
    B.peer_pid = pid > 0 ? pid : 0;
    int status = 0;
    while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    B.peer_pid = 0;
    if (pid < 0 || WIFSIGNALED(status)) {
        int i = 0;
        while (i < PEER_ROWS - 1 && rows[i].ran && rows[i].ok)
            i++;
        rows[i].ran = 1;
        snprintf(rows[i].err, sizeof(rows[i].err), "the peer's process %s %d",
                 pid < 0 ? "could not start: errno" : "died of signal",
                 pid < 0 ? errno : WTERMSIG(status));
    }
}

static int first_variant(peer_transport t)
{
    int v = 0;
    while (v < PEER_VARIANTS - 1 && peer_variants[v].transport != t)
        v++;
    return v;
}

/*
 * The key made once on this transport (tpm2-abrmd already running for PEER_ABRMD), then
 * each of its variants in a process of its own on a fresh TPM.
 */
static void run_variants(peer_transport t)
{
    char *key = NULL, *cert = NULL;
    row *head = &shared->peer[first_variant(t)][0];
    if (make_peer_key(head, t, &key, &cert) != 0) {
        head->ran = 1;
        goto out;
    }
    for (int v = first_variant(t); v < PEER_VARIANTS; v++) {
        row *rows = shared->peer[v];
        if (peer_variants[v].transport != t)
            continue;
        if (fresh_tpm(t, rows[0].err, sizeof(rows[0].err), &shared->abrmd_start_frames[v]) != 0) {
            rows[0].ran = 1;
            break;
        }
        run_variant(v, cert, key);
    }
out:
    free(key);
    free(cert);
}

/* Bare swtpm first, then, when it is installed, behind tpm2-abrmd; all stopped after. */
static void run_peer(void)
{
    row *bare = &shared->peer[first_variant(PEER_BARE)][0];
    row *abrmd = &shared->peer[first_variant(PEER_ABRMD)][0];
    if (!tpm2_module_present()) {
        bare->ran = 1;
        snprintf(bare->err, sizeof(bare->err), "no %s or no openssl command", B.tpm2_module);
        return;
    }
    setenv("TPM2OPENSSL_TCTI", B.tcti, 1); /* read by the openssl command and the provider */
    run_variants(PEER_BARE);
    const char *missing = provhsm_test_abrmd_missing();
    if (missing != NULL) {
        snprintf(B.abrmd_not_run, sizeof(B.abrmd_not_run), "%s", missing);
        return;
    }
    const char *bus = getenv("DBUS_SESSION_BUS_ADDRESS"); /* restored after */
    char *prior_bus = bus != NULL ? strdup(bus) : NULL;
    if (fresh_tpm(PEER_ABRMD, abrmd->err, sizeof(abrmd->err), NULL) != 0) {
        abrmd->ran = 1;
    } else {
        setenv("TPM2OPENSSL_TCTI", B.abrmd.tcti, 1);
        run_variants(PEER_ABRMD);
    }
    provhsm_test_abrmd_stop(&B.abrmd);
    if (prior_bus != NULL)
        setenv("DBUS_SESSION_BUS_ADDRESS", prior_bus, 1);
    else
        unsetenv("DBUS_SESSION_BUS_ADDRESS");
    free(prior_bus);
    setenv("TPM2OPENSSL_TCTI", B.tcti, 1);
}

/* ---- output -------------------------------------------------------------------------- */

static const char *unit_name(counter u)
{
    return u == COUNT_TPM ? "TPM cmds (proxy)" : u == COUNT_P11 ? "PKCS#11 calls" : "-";
}

static void print_row(const row *r)
{
    const char *tls = r->tls_version == TLS1_3_VERSION ? "1.3" : "1.2";
    if (!r->ran)
        return;
    if (!r->ok) {
        printf("%-60s %s  FAILED: %s; before failing: %llu TPM commands, %llu PKCS#11 calls\n",
               r->name, tls, r->err,
               (unsigned long long)(r->setup.frames + r->first.frames + r->steady.frames),
               (unsigned long long)(r->setup.p11 + r->first.p11 + r->steady.p11));
        return;
    }
    printf("%-60s %s %6u %9.0f %9.0f %7.0f %8.2f  %-17s %5llu %5llu\n", r->name, tls, B.n,
           r->median, r->p90, r->per_second, (double)row_count(r, &r->steady) / B.n,
           unit_name(r->unit), (unsigned long long)row_count(r, &r->setup),
           (unsigned long long)row_count(r, &r->first));
}

static void print_details(const row *r)
{
    if (!r->ran || r->unit != COUNT_TPM)
        return;
    printf("  %s, TLS %s%s:\n", r->name, r->tls_version == TLS1_3_VERSION ? "1.3" : "1.2",
           r->ok ? "" : " (failed)");
    if (r->ours)
        printf("    provhsm_tpm_commands_total: %.2f per handshake, setup %llu, first %llu\n",
               (double)r->steady.tpm / B.n, (unsigned long long)r->setup.tpm,
               (unsigned long long)r->first.tpm);
    if (r->ok)
        print_codes("    per handshake at the proxy: ", &r->steady, B.n);
    else
        print_codes("    timed handshakes, in all: ", &r->steady, 1);
    print_codes("    first handshake: ", &r->first, 1);
    print_codes("    setup: ", &r->setup, 1);
}

static void print_targets(const row *software, const row *tpm, const row *tpm12, const row *softhsm)
{
    printf("\ntargets\n");
    if (tpm->ok)
        printf("  TPM key, TPM commands per handshake after the first: %.2f (TLS 1.3)%s, "
               "target 1: %s\n",
               (double)tpm->steady.frames / B.n,
               tpm12->ok ? (tpm12->steady.frames == B.n ? ", 1.00 (TLS 1.2)" : ", TLS 1.2 differs")
                         : "",
               tpm->steady.frames == B.n && tpm->steady.tpm == B.n ? "met" : "MISSED");
    if (software->ok && softhsm->ok)
        printf("  SoftHSM2 median / software median, rows above: %.2f\n",
               softhsm->median / software->median);
    if (B.pair.ok)
        printf("  SoftHSM2 median / software median, handshakes alternating (%.0f / %.0f us): "
               "%.2f, target <= 1.30: %s\n",
               B.pair.softhsm_median, B.pair.software_median,
               B.pair.softhsm_median / B.pair.software_median,
               B.pair.softhsm_median <= 1.3 * B.pair.software_median ? "met" : "MISSED");
    else if (B.pair.ran)
        printf("  SoftHSM2 and software keys alternating: FAILED: %s\n", B.pair.err);
    for (int v = 0; v < PEER_VARIANTS; v++)
        if (shared->peer[v][0].ok && tpm->ok)
            printf("  %s: %.2f TPM commands per handshake against our %.2f; median %.0f us "
                   "against our %.0f us (TLS 1.3)\n",
                   shared->peer[v][0].name, (double)shared->peer[v][0].steady.frames / B.n,
                   (double)tpm->steady.frames / B.n, shared->peer[v][0].median, tpm->median);
}

/* How each peer variant ran: the TCTI, the providers' load order, the properties. */
static void print_peer_setup(void)
{
    printf("\ntpm2-openssl: %s; each variant in a process of its own (a fork of this one; the "
           "server stays here) on a restarted swtpm, the same client code as our rows. Keys "
           "made by openssl genpkey -provider tpm2 -provider default -propquery provider=tpm2: "
           "on the bare swtpm %llu TPM commands",
           B.tpm2_module, (unsigned long long)B.peer_keygen_frames[PEER_BARE]);
    if (B.abrmd_not_run[0] == '\0')
        printf(", behind tpm2-abrmd %llu (tpm2-abrmd's own included)",
               (unsigned long long)B.peer_keygen_frames[PEER_ABRMD]);
    printf("\n  query A = \"%s\" (tpm2-openssl's documentation), query B = \"%s\" (docs/"
           "sdk-contract)\n",
           PEER_QUERY_A, PEER_QUERY_B);
    if (B.abrmd_not_run[0] == '\0')
        printf("  behind tpm2-abrmd: a private D-Bus session bus (dbus-daemon --nofork "
               "--config-file=<its own>), tpm2-abrmd --session --allow-root --tcti=%s (the "
               "proxy: its context saves and loads are counted), started anew on each "
               "restarted swtpm\n",
               B.tcti);
    else
        printf("  behind tpm2-abrmd: not run: %s\n", B.abrmd_not_run);
    for (int v = 0; v < PEER_VARIANTS; v++) {
        const peer_variant *pv = &peer_variants[v];
        if (!shared->peer[v][0].ran)
            continue;
        printf("  %s: TPM2OPENSSL_TCTI=%s; %s; OSSL_PROVIDER_load(NULL, \"%s\"), then "
               "OSSL_PROVIDER_load(NULL, \"%s\"), then EVP_set_default_properties(NULL, "
               "\"%s\"); loading: %llu TPM commands",
               pv->names[0], pv->transport == PEER_BARE ? B.tcti : B.abrmd.tcti,
               pv->tpm2_first ? "a new library context made the thread's default "
                                "(OSSL_LIB_CTX_new, OSSL_LIB_CTX_set0_default), nothing in it yet"
                              : "the default library context inherited from this process, its "
                                "default provider already active",
               pv->tpm2_first ? "tpm2" : "default", pv->tpm2_first ? "default" : "tpm2", pv->query,
               (unsigned long long)shared->load_frames[v]);
        if (pv->transport == PEER_ABRMD)
            printf("; tpm2-abrmd's start before it: %llu TPM commands",
                   (unsigned long long)shared->abrmd_start_frames[v]);
        printf("\n");
    }
}

static void print_report(row *rows, size_t count)
{
    printf("bench_tls: TLS client-authenticated handshakes, %u per row after one warm-up, one "
           "client SSL_CTX per row set up the SDK's way; in-process server (TLS 1.2-1.3, "
           "verifies the client certificate); swtpm behind a TPM command counting proxy\n\n",
           B.n);
    printf("%-60s %-3s %6s %9s %9s %7s %8s  %-17s %5s %5s\n", "key", "TLS", "n", "median us",
           "p90 us", "hs/s", "hw/hs", "counted", "setup", "first");
    for (size_t i = 0; i < count; i++)
        print_row(&rows[i]);
    for (int v = 0; v < PEER_VARIANTS; v++)
        for (int i = 0; i < PEER_ROWS; i++)
            print_row(&shared->peer[v][i]);
    if (B.abrmd_not_run[0] != '\0')
        printf("%-60s     not run: %s\n", "peer tpm2-openssl behind tpm2-abrmd", B.abrmd_not_run);
    printf("\nhw/hs: hardware commands per handshake over the %u; setup: from the SDK's "
           "x509_create (our rows) or tls_client_new (the others) to a client SSL_CTX holding "
           "the key; first: the warm-up handshake. TLS 1.2: the software key's handshakes take as "
           "long, so the time over TLS 1.3 is the test server and client's, not the key's; "
           "compare TLS 1.2 rows with each other only\n",
           B.n);
    for (size_t i = 0; i < count; i++)
        print_details(&rows[i]);
    for (int v = 0; v < PEER_VARIANTS; v++)
        for (int i = 0; i < PEER_ROWS; i++)
            print_details(&shared->peer[v][i]);
    if (shared->peer[0][0].ran)
        print_peer_setup();
    print_targets(&rows[0], &rows[2], &rows[3], &rows[4]);
}

/* ---- setup and teardown --------------------------------------------------------------- */

/* The counters and the peer's rows, in a file mapping the peer's processes share. */
static int map_shared(void)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/shared", B.dir);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        return -1;
    void *map = MAP_FAILED;
    if (ftruncate(fd, (off_t)sizeof(shared_state)) == 0)
        map = mmap(NULL, sizeof(shared_state), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return -1;
    shared = map; /* zero-filled */
    counted = &shared->counts;
    for (int v = 0; v < PEER_VARIANTS; v++)
        for (int i = 0; i < PEER_ROWS; i++) {
            row *r = &shared->peer[v][i];
            r->name = peer_variants[v].names[i];
            r->tls_version = i == 1 ? TLS1_2_VERSION : TLS1_3_VERSION;
            r->unit = COUNT_TPM;
        }
    return 0;
}

static int start_devices(void)
{
    if (!provhsm_test_swtpm_available() || !provhsm_test_softhsm_available()) {
        fprintf(stderr, "bench_tls: needs swtpm and SoftHSM2 (softhsm2-util and the module)\n");
        return -1;
    }
    if (provhsm_test_swtpm_start(&B.swtpm, NULL) != 0 || proxy_start(B.swtpm.port) != 0) {
        fprintf(stderr, "bench_tls: swtpm or the counting proxy did not start\n");
        return -1;
    }
    snprintf(B.tcti, sizeof(B.tcti), "swtpm:host=127.0.0.1,port=%d", proxy.port);
    if (provhsm_test_softhsm_start(&B.softhsm, TOKEN_LABEL) != 0)
        return -1;
    B.ca = tls_ca_new("bench_tls CA");
    B.srv = B.ca != NULL ? tls_server_start(B.ca) : NULL;
    if (B.srv == NULL) {
        fprintf(stderr, "bench_tls: the TLS server did not start\n");
        return -1;
    }
    return 0;
}

/* ---- a stop signal: the daemons and the temporary directories go too ---------------- */

static int signal_pipe[2] = {-1, -1};

static void on_stop_signal(int sig)
{
    int saved = errno;
    unsigned char byte = (unsigned char)sig;
    ssize_t written = write(signal_pipe[1], &byte, 1);
    (void)written; /* when it fails, there is nothing more a handler can do */
    errno = saved;
}

/*
 * Waits for a stop signal, then stops what lives outside this process (the peer's
 * process, tpm2-abrmd, dbus-daemon, swtpm) and removes the temporary directories, and
 * exits. On a thread of its own, because a signal handler cannot do this safely; what
 * the main thread was doing at that moment does not matter any more.
 */
// cppcheck-suppress constParameter ; a pthread start routine
static void *cleanup_on_signal(void *unused)
{
    unsigned char sig = 0;
    (void)unused;
    while (read(signal_pipe[0], &sig, 1) < 0 && errno == EINTR)
        ;
    atomic_store(&stop_requested, 1);
    fprintf(stderr, "bench_tls: signal %d: stopping the daemons, removing %s\n", sig, B.dir);
    flockfile(stdout); /* the main thread prints no half report; never unlocked */
    flockfile(stderr);
    if (B.peer_pid > 0)
        kill(B.peer_pid, SIGKILL);
    provhsm_test_abrmd_stop(&B.abrmd);
    provhsm_test_swtpm_stop(&B.swtpm);
    provhsm_test_softhsm_stop(&B.softhsm);
    if (B.dir[0] != '\0')
        provhsm_test_remove_tree(B.dir);
    _exit(128 + sig);
}

static int cleanup_on_signals(void)
{
    pthread_t thread;
    struct sigaction sa = {.sa_handler = on_stop_signal};
    sigemptyset(&sa.sa_mask);
    if (pipe(signal_pipe) != 0)
        return -1;
    for (int i = 0; i < 2; i++)
        fcntl(signal_pipe[i], F_SETFD, FD_CLOEXEC);
    if (pthread_create(&thread, NULL, cleanup_on_signal, NULL) != 0)
        return -1;
    pthread_detach(thread);
    return sigaction(SIGINT, &sa, NULL) == 0 && sigaction(SIGTERM, &sa, NULL) == 0 &&
                   sigaction(SIGHUP, &sa, NULL) == 0
               ? 0
               : -1;
}

static void stop_everything(void)
{
    tls_server_stop(B.srv);
    tls_ca_free(B.ca);
    if (B.hsm_initialised)
        deinitialize_hsm_system();
    free(B.software_cert);
    provhsm_free_secret(B.software_key);
    provhsm_test_abrmd_stop(&B.abrmd); /* before swtpm and the proxy it talks to */
    proxy_stop();
    provhsm_test_swtpm_stop(&B.swtpm);
    provhsm_test_softhsm_stop(&B.softhsm);
    if (B.dir[0] != '\0')
        provhsm_test_remove_tree(B.dir);
    free(B.samples);
    if (shared != NULL)
        munmap(shared, sizeof(*shared));
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : DEFAULT_HANDSHAKES;
    if (argc > 2 || n < 1 || n > 100000) {
        fprintf(stderr, "usage: bench_tls [HANDSHAKES]   (1..100000, default %d)\n",
                DEFAULT_HANDSHAKES);
        return 2;
    }
    B.n = (unsigned)n;
    setenv("TSS2_LOG", "all+none", 0);
    unsetenv("PROVHSM_STORE"); /* every row names its store in its own configuration */
    unsetenv("PROVHSM_TCTI");
    snprintf(B.dir, sizeof(B.dir), "/tmp/provhsm-bench-tls-XXXXXX");
    B.samples = malloc(sizeof(double) * B.n);
    if (B.samples == NULL || mkdtemp(B.dir) == NULL) {
        B.dir[0] = '\0';
        free(B.samples);
        fprintf(stderr, "bench_tls: no memory or no temporary directory\n");
        return 1;
    }
    if (cleanup_on_signals() != 0) {
        fprintf(stderr, "bench_tls: cannot set up the cleanup on signals\n");
        provhsm_test_remove_tree(B.dir);
        free(B.samples);
        return 1;
    }
    if (map_shared() != 0) {
        fprintf(stderr, "bench_tls: cannot map %s/shared\n", B.dir);
        stop_everything();
        return 1;
    }

    row rows[] = {
        {.name = "software EC P-256 (store, PKCS#8)",
         .tls_version = TLS1_3_VERSION,
         .unit = COUNT_NONE,
         .ours = 1},
        {.name = "software EC P-256 (store, PKCS#8)",
         .tls_version = TLS1_2_VERSION,
         .unit = COUNT_NONE,
         .ours = 1},
        {.name = "TPM EC P-256 ([x509] backend = tpm)",
         .tls_version = TLS1_3_VERSION,
         .unit = COUNT_TPM,
         .ours = 1},
        {.name = "TPM EC P-256 ([x509] backend = tpm)",
         .tls_version = TLS1_2_VERSION,
         .unit = COUNT_TPM,
         .ours = 1},
        {.name = "SoftHSM2 EC P-256 ([x509] backend = pkcs11)",
         .tls_version = TLS1_3_VERSION,
         .unit = COUNT_P11,
         .ours = 1},
    };
    int failed = start_devices() != 0;
    if (!failed) {
        B.hsm_initialised = initialize_hsm_system() == 0;
        failed = !B.hsm_initialised;
    }
    if (!failed) {
        char tpm[256], p11[512];
        snprintf(tpm, sizeof(tpm), "[x509]\nbackend = tpm\n[tpm]\ntcti = %s\n", B.tcti);
        snprintf(p11, sizeof(p11),
                 "[x509]\nbackend = pkcs11\n[pkcs11]\nmodule = %s\ntoken = pkcs11:token=%s\n"
                 "pin_env = %s\n",
                 B.softhsm.module, TOKEN_LABEL, PROVHSM_TEST_PIN_ENV);
        failed |= run_ours(&rows[0], 2, "software", "", 1, 0) != 0;
        failed |= run_ours(&rows[2], 2, "tpm", tpm, 0, 0) != 0;
        failed |= run_ours(&rows[4], 1, "pkcs11", p11, 0, 1) != 0;
        run_peer();
    }

    if (!failed || rows[0].ran)
        print_report(rows, sizeof(rows) / sizeof(rows[0]));
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        failed |= rows[i].ours && !rows[i].ok;
    failed |= B.pair.ran && !B.pair.ok;
    stop_everything();
    return failed ? 1 : 0;
}
