/*
 * libFuzzer target for the parser of `provhsm store reseal --pcr-values` (src/store.c,
 * provhsm_store_parse_pcr_values), whose text comes from the command line, and the check
 * of what it parsed against [store] seal_pcrs (provhsm_store_check_pcr_values). Any text
 * must be refused cleanly or parsed whole. Properties of a text that parses: the PCRs
 * named fit 0..23 and the bank's digest size is the value size; the same values written
 * back canonically (PCRs ascending, lower-case hex) parse to the same bytes; the text
 * with one more ',' or one more hex digit is refused. Built only with PROVHSM_FUZZ=ON
 * (tests/fuzz/CMakeLists.txt); seeds in corpus/pcr_values.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "store.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    return 0;
}

static const char *bank_name(uint16_t alg)
{
    switch (alg) {
    case 0x0004:
        return "sha1";
    case 0x000b:
        return "sha256";
    case 0x000c:
        return "sha384";
    case 0x000d:
        return "sha512";
    default:
        return NULL;
    }
}

/* The values as the parser's canonical text; malloc'd. */
static char *canonical(const provhsm_pcr_values *v)
{
    char *out = malloc(PROVHSM_PCR_VALUES_MAX_TEXT + 1);
    FUZZ_CHECK(out != NULL);
    size_t n = (size_t)snprintf(out, 16, "%s:", bank_name(v->bank));
    for (unsigned pcr = 0; pcr < 24; pcr++) {
        if (!(v->named & (1ul << pcr)))
            continue;
        n += (size_t)snprintf(out + n, 8, "%s%u=", out[n - 1] == ':' ? "" : ",", pcr);
        for (size_t i = 0; i < v->digest_len; i++)
            n += (size_t)snprintf(out + n, 3, "%02x", v->value[pcr][i]);
    }
    FUZZ_CHECK(n <= PROVHSM_PCR_VALUES_MAX_TEXT);
    return out;
}

/* `text` with `tail` appended is refused. */
static void refused_with(const char *text, const char *tail)
{
    size_t len = strlen(text);
    char *longer = malloc(len + strlen(tail) + 1);
    FUZZ_CHECK(longer != NULL);
    memcpy(longer, text, len);
    strcpy(longer + len, tail);
    provhsm_pcr_values v;
    FUZZ_CHECK(provhsm_store_parse_pcr_values(longer, &v) == PROVHSM_E_INVALID_ARG);
    free(longer);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static provhsm_pcr_values parsed, again;
    char *text = fuzz_text(data, size);
    provhsm_err rc = provhsm_store_parse_pcr_values(text, &parsed);
    FUZZ_CHECK(rc == PROVHSM_OK || rc == PROVHSM_E_INVALID_ARG);
    if (rc == PROVHSM_OK) {
        const char *bank = bank_name(parsed.bank);
        FUZZ_CHECK(bank != NULL);
        FUZZ_CHECK(parsed.named != 0 && (parsed.named >> 24) == 0);
        FUZZ_CHECK(parsed.digest_len == (strcmp(bank, "sha1") == 0     ? 20
                                         : strcmp(bank, "sha256") == 0 ? 32
                                         : strcmp(bank, "sha384") == 0 ? 48
                                                                       : 64));
        char *canon = canonical(&parsed);
        FUZZ_CHECK(provhsm_store_parse_pcr_values(canon, &again) == PROVHSM_OK);
        FUZZ_CHECK(memcmp(&parsed, &again, sizeof(parsed)) == 0);
        free(canon);
        refused_with(text, ",");
        refused_with(text, "0");

        /* against seal_pcrs = sha256:0,7,16: accepted exactly when it fits */
        provhsm_config cfg;
        memset(&cfg, 0, sizeof(cfg));
        snprintf(cfg.seal_pcrs, sizeof(cfg.seal_pcrs), "sha256:0,7,16");
        cfg.seal_pcr_bank = 0x000b;
        cfg.seal_pcr_mask = 1ul << 0 | 1ul << 7 | 1ul << 16;
        int fits = parsed.bank == cfg.seal_pcr_bank && (parsed.named & ~cfg.seal_pcr_mask) == 0;
        rc = provhsm_store_check_pcr_values(&cfg, &parsed);
        FUZZ_CHECK(rc == (fits ? PROVHSM_OK : PROVHSM_E_INVALID_ARG));
    } else {
        FUZZ_CHECK(parsed.named == 0 && parsed.bank == 0);
    }
    free(text);
    return 0;
}
