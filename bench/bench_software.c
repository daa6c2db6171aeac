/*
 * bench_software: what the software backend costs the SDK per call. Creates a temporary
 * store (PROVHSM_STORE under $TMPDIR, an empty configuration file) holding a self-signed
 * EC P-256 X.509 identity and a symmetric key, then times each SDK-table operation and a
 * full SAS token over many runs (median and 90th percentile, CLOCK_MONOTONIC), next to the
 * floor: HMAC-SHA256 + base64 of the same payload straight through OpenSSL. Also the heap
 * a handle holds (mallinfo2() around 100 live handles). Targets are printed next to the
 * results with PASS/FAIL; the exit status is 1 when any target is missed.
 * Usage: bench_software [RUNS]   (default 2000). Not a ctest test: timings need a quiet
 * machine. Uses the public API, the SDK tables, and the library's SAS code (src/sas.h) for
 * the per-token path.
 */
#include <dirent.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "bench_stats.h"
#include "encoding.h"
#include "hsm_client_data.h"
#include "provhsm/provhsm.h"
#include "sas.h"

#define HANDLES_FOR_HEAP 100
#define X509_CN          "bench-device"
#define SYMM_ID          "bench-device-sym"
#define ID_SCOPE         "0ne00000000"
/* The registration's scope, and the same URL-encoded the SDK's way (for the floor). */
#define SCOPE_PLAIN   ID_SCOPE "/registrations/" SYMM_ID
#define SCOPE_ENCODED ID_SCOPE "%2fregistrations%2f" SYMM_ID

typedef struct bench_ctx {
    const HSM_CLIENT_X509_INTERFACE *x509;
    const HSM_CLIENT_KEY_INTERFACE *key;
    HSM_CLIENT_HANDLE x509_handle;
    HSM_CLIENT_HANDLE key_handle;
    unsigned char raw_key[32];
    uint64_t expiry;
    int failed; /* an operation returned an error while being timed */
} bench_ctx;

typedef int (*bench_op)(bench_ctx *ctx);

/* ---- the operations, each returning 0 on success ---------------------------------- */

static int op_x509_create_destroy(bench_ctx *c)
{
    HSM_CLIENT_HANDLE h = c->x509->hsm_client_x509_create();
    if (h == NULL)
        return 1;
    c->x509->hsm_client_x509_destroy(h);
    return 0;
}

static int op_get_certificate(bench_ctx *c)
{
    char *s = c->x509->hsm_client_get_cert(c->x509_handle);
    free(s);
    return s == NULL;
}

static int op_get_alias_key(bench_ctx *c)
{
    char *s = c->x509->hsm_client_get_key(c->x509_handle);
    int rc = s == NULL;
    provhsm_free_secret(s);
    return rc;
}

static int op_get_common_name(bench_ctx *c)
{
    char *s = c->x509->hsm_client_get_common_name(c->x509_handle);
    free(s);
    return s == NULL;
}

static int op_key_create_destroy(bench_ctx *c)
{
    HSM_CLIENT_HANDLE h = c->key->hsm_client_key_create();
    if (h == NULL)
        return 1;
    c->key->hsm_client_key_destroy(h);
    return 0;
}

static int op_get_symmetric_key(bench_ctx *c)
{
    char *s = c->key->hsm_client_get_symm_key(c->key_handle);
    int rc = s == NULL;
    provhsm_free_secret(s);
    return rc;
}

static int op_get_registration_name(bench_ctx *c)
{
    char *s = c->key->hsm_client_get_registration_name(c->key_handle);
    free(s);
    return s == NULL;
}

static int op_sas_token(bench_ctx *c)
{
    char *token = NULL;
    provhsm_err err =
        provhsm_sas_token("symmetric", SCOPE_PLAIN, c->expiry, "registration", &token);
    free(token);
    return err != PROVHSM_OK;
}

/* The floor for a SAS token: HMAC-SHA256 of "<encoded scope>\n<expiry>" + base64. */
static int op_floor_hmac_base64(bench_ctx *c)
{
    char payload[256];
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned char b64[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
    size_t mac_len = 0;
    int n = snprintf(payload, sizeof(payload), "%s\n%llu", SCOPE_ENCODED,
                     (unsigned long long)c->expiry);
    if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, c->raw_key, sizeof(c->raw_key),
                  (const unsigned char *)payload, (size_t)n, mac, sizeof(mac), &mac_len) == NULL)
        return 1;
    EVP_EncodeBlock(b64, mac, (int)mac_len);
    OPENSSL_cleanse(mac, sizeof(mac));
    return 0;
}

/*
 * A full SAS token on a handle the caller already holds, as the SDK makes one for every
 * registration request: the key through the table, then provhsm's own SAS code: the
 * SDK's URL encoding of the scope, the string to sign, base64 decode of the key,
 * HMAC-SHA256, base64 and URL encoding of the signature, the token string.
 */
static int op_sas_on_live_handle(bench_ctx *c)
{
    char *key_b64 = c->key->hsm_client_get_symm_key(c->key_handle);
    char *scope = NULL, *payload = NULL, *token = NULL;
    uint8_t mac[32];
    int rc = 1;
    if (key_b64 == NULL || (scope = provhsm_url_encode(SCOPE_PLAIN)) == NULL ||
        provhsm_sas_string_to_sign(scope, c->expiry, &payload) != PROVHSM_OK ||
        provhsm_sas_hmac_b64key(key_b64, (const uint8_t *)payload, strlen(payload), mac) !=
            PROVHSM_OK ||
        provhsm_sas_format(scope, mac, sizeof(mac), c->expiry, "registration", &token) !=
            PROVHSM_OK)
        goto done;
    rc = 0;
done:
    OPENSSL_cleanse(mac, sizeof(mac));
    free(scope);
    free(payload);
    free(token);
    provhsm_free_secret(key_b64);
    return rc;
}

/* ---- measurement -------------------------------------------------------------------- */

typedef struct result {
    double median, p90;
} result;

static result measure(bench_ctx *c, bench_op op, int runs, double *samples)
{
    result r = {-1, -1};
    for (int i = 0; i < 20; i++) { /* warm up caches and OpenSSL's fetched algorithms */
        if (op(c) != 0) {
            c->failed = 1;
            return r;
        }
    }
    for (int i = 0; i < runs; i++) {
        double t0 = bench_now_us();
        int rc = op(c);
        samples[i] = bench_now_us() - t0;
        if (rc != 0) {
            c->failed = 1;
            return r;
        }
    }
    bench_stats(samples, runs, &r.median, &r.p90);
    return r;
}

static int report(const char *name, result r, double target, const char *target_text)
{
    int pass = r.median >= 0 && r.median <= target;
    if (r.median < 0)
        printf("  %-34s %10s %10s   %-22s FAIL (operation failed)\n", name, "-", "-", target_text);
    else
        printf("  %-34s %10.2f %10.2f   %-22s %s\n", name, r.median, r.p90, target_text,
               pass ? "PASS" : "FAIL");
    return pass;
}

/* Heap bytes (malloc arena, in use) per live handle, over HANDLES_FOR_HEAP handles. */
static long heap_per_handle(HSM_CLIENT_CREATE create, HSM_CLIENT_DESTROY destroy, long *leak_out)
{
    HSM_CLIENT_HANDLE handles[HANDLES_FOR_HEAP];
    struct mallinfo2 before = mallinfo2();
    int made = 0;
    for (; made < HANDLES_FOR_HEAP; made++) {
        handles[made] = create();
        if (handles[made] == NULL)
            break;
    }
    struct mallinfo2 during = mallinfo2();
    for (int i = 0; i < made; i++)
        destroy(handles[i]);
    struct mallinfo2 after = mallinfo2();
    if (made < HANDLES_FOR_HEAP)
        return -1;
    *leak_out = (long)after.uordblks - (long)before.uordblks;
    return ((long)during.uordblks - (long)before.uordblks) / HANDLES_FOR_HEAP;
}

/* ---- setup: a temporary store with both identities ----------------------------------- */

static int write_empty_file(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    /* whatever the umask: a configuration others can write is refused */
    if (fclose(f) != 0)
        return -1;
    return chmod(path, 0644);
}

static int setup_store(const char *dir, bench_ctx *c)
{
    char path[1024], *pem = NULL, b64[64];
    snprintf(path, sizeof(path), "%s/provhsm.conf", dir);
    if (write_empty_file(path) != 0 || setenv("PROVHSM_CONFIG", path, 1) != 0)
        return -1;
    snprintf(path, sizeof(path), "%s/store", dir);
    if (setenv("PROVHSM_STORE", path, 1) != 0)
        return -1;
    unsetenv("PROVHSM_TCTI");
    unsetenv("PROVHSM_PASSPHRASE");

    provhsm_err err = provhsm_store_init();
    if (err != PROVHSM_OK) {
        fprintf(stderr, "bench: provhsm_store_init: %s\n", provhsm_strerror(err));
        return -1;
    }
    err = provhsm_x509_generate(X509_CN, PROVHSM_KEY_EC_P256, 365, 0, &pem);
    free(pem);
    if (err != PROVHSM_OK) {
        fprintf(stderr, "bench: provhsm_x509_generate: %s\n", provhsm_strerror(err));
        return -1;
    }
    if (RAND_bytes(c->raw_key, sizeof(c->raw_key)) != 1)
        return -1;
    EVP_EncodeBlock((unsigned char *)b64, c->raw_key, sizeof(c->raw_key));
    err = provhsm_symmetric_set(SYMM_ID, b64);
    OPENSSL_cleanse(b64, sizeof(b64));
    if (err != PROVHSM_OK) {
        fprintf(stderr, "bench: provhsm_symmetric_set: %s\n", provhsm_strerror(err));
        return -1;
    }
    return 0;
}

/* Removes the temporary directory and everything in it (the store is small and shallow). */
static void remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d != NULL && (e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char child[1024];
            if (snprintf(child, sizeof(child), "%s/%s", path, e->d_name) < (int)sizeof(child))
                remove_tree(child);
        }
        if (d != NULL)
            closedir(d);
        if (rmdir(path) != 0)
            fprintf(stderr, "bench: could not remove %s\n", path);
    } else if (unlink(path) != 0) {
        fprintf(stderr, "bench: could not remove %s\n", path);
    }
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 2000;
    if (runs < 10 || runs > 10000000) {
        fprintf(stderr, "usage: bench_software [RUNS >= 10]\n");
        return 2;
    }
    const char *tmp = getenv("TMPDIR");
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/provhsm-bench.XXXXXX", tmp != NULL && *tmp ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("bench: mkdtemp");
        return 1;
    }

    int status = 1;
    double *samples = malloc(sizeof(double) * (size_t)runs);
    bench_ctx c = {0};
    c.expiry = (uint64_t)time(NULL) + 3600;
    if (samples == NULL || setup_store(dir, &c) != 0)
        goto done;
    if (hsm_client_x509_init() != 0 || hsm_client_tpm_init() != 0) {
        fprintf(stderr, "bench: init failed\n");
        goto done;
    }
    c.x509 = hsm_client_x509_interface();
    c.key = hsm_client_key_interface();
    c.x509_handle = c.x509->hsm_client_x509_create();
    c.key_handle = c.key->hsm_client_key_create();
    if (c.x509_handle == NULL || c.key_handle == NULL) {
        fprintf(stderr, "bench: create failed on a populated store\n");
        goto deinit;
    }

    printf("provhsm %s, software backend, %d runs per operation, times in microseconds\n",
           provhsm_version(), runs);
    printf("  %-34s %10s %10s   %-22s %s\n", "operation", "median", "p90", "target", "");
    int all = 1;
    result floor_r = measure(&c, op_floor_hmac_base64, runs, samples);
    result r;
    r = measure(&c, op_x509_create_destroy, runs, samples);
    all &= report("X.509 create+destroy", r, 2000, "<= 2000");
    r = measure(&c, op_get_certificate, runs, samples);
    all &= report("X.509 get_certificate", r, 20, "<= 20");
    r = measure(&c, op_get_alias_key, runs, samples);
    all &= report("X.509 get_alias_key", r, 20, "<= 20");
    r = measure(&c, op_get_common_name, runs, samples);
    all &= report("X.509 get_common_name", r, 20, "<= 20");
    r = measure(&c, op_key_create_destroy, runs, samples);
    all &= report("symmetric create+destroy", r, 500, "<= 500");
    r = measure(&c, op_get_symmetric_key, runs, samples);
    all &= report("symmetric get_symmetric_key", r, 20, "<= 20");
    r = measure(&c, op_get_registration_name, runs, samples);
    all &= report("symmetric get_registration_name", r, 20, "<= 20");
    result live = measure(&c, op_sas_on_live_handle, runs, samples);
    char sas_target[64];
    snprintf(sas_target, sizeof(sas_target), "<= 3 x floor = %.2f", 3 * floor_r.median);
    all &= report("SAS token on a live handle", live, 3 * floor_r.median, sas_target);
    if (floor_r.median >= 0)
        printf("  %-34s %10.2f %10.2f   %-22s\n", "floor: HMAC-SHA256 + base64", floor_r.median,
               floor_r.p90, "(OpenSSL directly)");
    r = measure(&c, op_sas_token, runs, samples);
    if (r.median >= 0)
        printf("  %-34s %10.2f %10.2f   %-22s\n", "provhsm_sas_token, one shot", r.median, r.p90,
               "(opens a handle)");
    if (live.median >= 0 && floor_r.median > 0)
        printf("  live-handle token / floor = %.2fx; one-shot provhsm_sas_token / floor = %.1fx\n",
               live.median / floor_r.median, r.median / floor_r.median);

    long leak_x = 0, leak_k = 0;
    /* Settling rounds: OpenSSL fills internal caches while many handles are alive; stop
     * once a round returns every byte (at most 20 rounds). */
    for (int round = 0; round < 20; round++) {
        long left_x = 1, left_k = 1;
        (void)heap_per_handle(c.x509->hsm_client_x509_create, c.x509->hsm_client_x509_destroy,
                              &left_x);
        (void)heap_per_handle(c.key->hsm_client_key_create, c.key->hsm_client_key_destroy, &left_k);
        if (left_x == 0 && left_k == 0)
            break;
    }
    long per_x =
        heap_per_handle(c.x509->hsm_client_x509_create, c.x509->hsm_client_x509_destroy, &leak_x);
    long per_k =
        heap_per_handle(c.key->hsm_client_key_create, c.key->hsm_client_key_destroy, &leak_k);
    printf("heap held per live handle (mallinfo2 uordblks over %d handles):\n", HANDLES_FOR_HEAP);
    printf("  X.509 handle: %ld bytes; after destroying all: %+ld bytes\n", per_x, leak_x);
    printf("  symmetric handle: %ld bytes; after destroying all: %+ld bytes\n", per_k, leak_k);
    if (per_x < 0 || per_k < 0) {
        printf("  FAIL: create failed while measuring the heap\n");
        all = 0;
    }
    if (c.failed)
        printf("an operation failed while being timed (see the log above)\n");
    printf("%s\n", all && !c.failed ? "bench: all targets met" : "bench: targets missed");
    status = all && !c.failed ? 0 : 1;

deinit:
    if (c.x509_handle != NULL)
        c.x509->hsm_client_x509_destroy(c.x509_handle);
    if (c.key_handle != NULL)
        c.key->hsm_client_key_destroy(c.key_handle);
    hsm_client_tpm_deinit();
    hsm_client_x509_deinit();
done:
    OPENSSL_cleanse(c.raw_key, sizeof(c.raw_key));
    free(samples);
    remove_tree(dir);
    return status;
}
