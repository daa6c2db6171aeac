/*
 * Parser for the provisioning service's activation blob (see tpm_blob.h and
 * sdk-contract.md, "The activation blob"). It walks the blob with libtss2-mu, one field
 * at a time, checking every size against what remains, and then checks that the identity
 * key's public area is something the TPM backend is willing to import: a KEYEDHASH
 * HMAC-SHA256 signing key with nameAlg SHA-256 and the attributes signing needs.
 * Callers: the TPM backend (before any TPM command), the fuzz target, the tool.
 * Keeps nothing static and allocates nothing; the blob itself is never logged.
 */
#include <string.h>
#include <tss2/tss2_mu.h>

#include "encoding.h"
#include "log.h"
#include "tpm_blob.h"

#define MOD "tpm-blob"

/*
 * One sized field through its MU unmarshaler. MU already refuses a size larger than the
 * structure or than what remains; the explicit checks below keep that true whatever MU
 * version is linked, and add the rule that none of these fields may be empty.
 */
#define BLOB_TPM2B(mu_fn, field, member, what)                                                     \
    do {                                                                                           \
        size_t start_ = off;                                                                       \
        TSS2_RC rc_ = mu_fn(buf, len, &off, &blob.field);                                          \
        if (rc_ != TSS2_RC_SUCCESS) {                                                              \
            PH_ERR(MOD, "%s at offset %zu: truncated or oversized (0x%x)", what, start_,           \
                   (unsigned)rc_);                                                                 \
            goto cleanup;                                                                          \
        }                                                                                          \
        if (blob.field.size == 0 || blob.field.size > sizeof(blob.field.member) ||                 \
            off != start_ + 2 + (size_t)blob.field.size) {                                         \
            PH_ERR(MOD, "%s at offset %zu: bad size %u", what, start_, (unsigned)blob.field.size); \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

/*
 * TPM2B_PUBLIC gets its own path: MU unmarshals the inner TPMT_PUBLIC against the whole
 * buffer rather than the declared size, and some versions (3.2.1 among them) report
 * success when that inner step fails. So MU only sees the bytes the size field declares,
 * and the area must consume exactly them.
 */
static int parse_public(const uint8_t *buf, size_t len, size_t *off, TPM2B_PUBLIC *pub)
{
    size_t start = *off;
    size_t local = start;
    uint16_t declared = 0;

    if (Tss2_MU_UINT16_Unmarshal(buf, len, &local, &declared) != TSS2_RC_SUCCESS) {
        PH_ERR(MOD, "objectPublic at offset %zu: truncated size", start);
        return -1;
    }
    if (declared == 0 || declared > len - local || declared > sizeof(pub->publicArea)) {
        PH_ERR(MOD, "objectPublic at offset %zu: bad size %u (%zu bytes remain)", start,
               (unsigned)declared, len - local);
        return -1;
    }
    size_t end = local + declared;
    local = start;
    memset(pub, 0, sizeof(*pub)); /* MU refuses a destination whose size is not zero */
    TSS2_RC rc = Tss2_MU_TPM2B_PUBLIC_Unmarshal(buf, end, &local, pub);
    if (rc != TSS2_RC_SUCCESS || local != end || pub->size != declared) {
        PH_ERR(MOD, "objectPublic at offset %zu: area does not fill its %u bytes (0x%x)", start,
               (unsigned)declared, (unsigned)rc);
        return -1;
    }
    *off = end;
    return 0;
}

/*
 * What the signing path needs of the identity key's attributes, and what a duplicate can
 * carry at all. An attribute the TPM would refuse at Import, Load or EvictControl, or
 * that makes TPM2_HMAC fail, is refused here, before any TPM command, so that a bad blob
 * never reaches the point where the working key is replaced.
 */
#define ATTR_KNOWN                                                                                 \
    (TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_STCLEAR | TPMA_OBJECT_FIXEDPARENT |                        \
     TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_ADMINWITHPOLICY |    \
     TPMA_OBJECT_NODA | TPMA_OBJECT_ENCRYPTEDDUPLICATION | TPMA_OBJECT_RESTRICTED |                \
     TPMA_OBJECT_DECRYPT | TPMA_OBJECT_SIGN_ENCRYPT)

static const struct {
    TPMA_OBJECT bit;
    int want; /* 1: must be set, 0: must be clear */
    const char *why;
} identity_attributes[] = {
    {TPMA_OBJECT_SIGN_ENCRYPT, 1, "sign attribute missing: the key cannot make an HMAC"},
    {TPMA_OBJECT_USERWITHAUTH, 1,
     "userWithAuth missing: the key would sign only under a policy session"},
    {TPMA_OBJECT_RESTRICTED, 0, "restricted: TPM2_HMAC refuses a restricted key"},
    {TPMA_OBJECT_DECRYPT, 0, "decrypt set: not an HMAC signing key"},
    {TPMA_OBJECT_FIXEDTPM, 0, "fixedTPM set: a duplicated key cannot be imported with it"},
    {TPMA_OBJECT_FIXEDPARENT, 0, "fixedParent set: a duplicated key cannot be imported with it"},
    {TPMA_OBJECT_STCLEAR, 0, "stClear set: the key could not be made persistent"},
};

static int check_identity_attributes(TPMA_OBJECT attrs)
{
    if ((attrs & ~ATTR_KNOWN) != 0) {
        PH_ERR(MOD, "objectPublic: reserved or unknown attributes 0x%08x set (attributes 0x%08x)",
               (unsigned)(attrs & ~ATTR_KNOWN), (unsigned)attrs);
        return -1;
    }
    for (size_t i = 0; i < sizeof(identity_attributes) / sizeof(identity_attributes[0]); i++) {
        int set = (attrs & identity_attributes[i].bit) != 0;
        if (set != identity_attributes[i].want) {
            PH_ERR(MOD, "objectPublic: %s (attributes 0x%08x)", identity_attributes[i].why,
                   (unsigned)attrs);
            return -1;
        }
    }
    return 0;
}

/* The identity key must be an HMAC-SHA256 signing key; anything else is refused here. */
static int check_identity_public(const TPMT_PUBLIC *p)
{
    if (p->type != TPM2_ALG_KEYEDHASH) {
        PH_ERR(MOD, "objectPublic: type 0x%04x is not KEYEDHASH", (unsigned)p->type);
        return -1;
    }
    if (p->nameAlg != TPM2_ALG_SHA256) {
        PH_ERR(MOD, "objectPublic: nameAlg 0x%04x is not SHA256", (unsigned)p->nameAlg);
        return -1;
    }
    if (check_identity_attributes(p->objectAttributes) != 0)
        return -1;
    const TPMT_KEYEDHASH_SCHEME *s = &p->parameters.keyedHashDetail.scheme;
    if (s->scheme != TPM2_ALG_HMAC) {
        PH_ERR(MOD, "objectPublic: scheme 0x%04x is not HMAC", (unsigned)s->scheme);
        return -1;
    }
    if (s->details.hmac.hashAlg != TPM2_ALG_SHA256) {
        PH_ERR(MOD, "objectPublic: HMAC hash 0x%04x is not SHA256",
               (unsigned)s->details.hmac.hashAlg);
        return -1;
    }
    /* unique is H(seedValue || key) with the name algorithm: Load refuses another size */
    if (p->unique.keyedHash.size != 32) {
        PH_ERR(MOD, "objectPublic: unique has %u bytes, not a SHA-256 digest",
               (unsigned)p->unique.keyedHash.size);
        return -1;
    }
    return 0;
}

provhsm_err provhsm_tpm_blob_parse(const uint8_t *buf, size_t len, provhsm_activation_blob *out)
{
    provhsm_err err = PROVHSM_E_CORRUPT;
    provhsm_activation_blob blob;
    size_t off = 0;
    uint16_t enc_len = 0;

    if (buf == NULL || out == NULL) {
        PH_ERR(MOD, "activation blob: NULL argument");
        return PROVHSM_E_INVALID_ARG;
    }
    memset(&blob, 0, sizeof(blob));
    if (len == 0) {
        PH_ERR(MOD, "activation blob is empty");
        goto cleanup;
    }

    BLOB_TPM2B(Tss2_MU_TPM2B_ID_OBJECT_Unmarshal, credential_blob, credential, "credentialBlob");
    BLOB_TPM2B(Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal, secret, secret, "secret");
    BLOB_TPM2B(Tss2_MU_TPM2B_PRIVATE_Unmarshal, duplicate, buffer, "duplicate");
    BLOB_TPM2B(Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal, in_sym_seed, secret, "inSymSeed");
    if (parse_public(buf, len, &off, &blob.object_public) != 0)
        goto cleanup;

    /* The encrypted-data field an import does not use: only its bounds matter. */
    size_t enc_start = off;
    if (Tss2_MU_UINT16_Unmarshal(buf, len, &off, &enc_len) != TSS2_RC_SUCCESS) {
        PH_ERR(MOD, "encrypted data at offset %zu: truncated size", enc_start);
        goto cleanup;
    }
    if (enc_len > len - off) {
        PH_ERR(MOD, "encrypted data at offset %zu: size %u but %zu bytes remain", enc_start,
               (unsigned)enc_len, len - off);
        goto cleanup;
    }
    off += enc_len;
    blob.trailing_len = len - off;

    if (check_identity_public(&blob.object_public.publicArea) != 0)
        goto cleanup;

    *out = blob;
    err = PROVHSM_OK;

cleanup:
    /* Public data and encrypted secrets only: nothing here needs a wipe. */
    return err;
}

/* ---- authorisation values ------------------------------------------------------------- */

provhsm_err provhsm_tpm_auth_parse(const char *text, size_t len, const char *what, TPM2B_AUTH *auth)
{
    if (text == NULL || what == NULL || auth == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (len > 0 && text[len - 1] == '\n')
        len--;
    if (len > 0 && text[len - 1] == '\r')
        len--;
    if (len >= 4 && memcmp(text, "hex:", 4) == 0) {
        text += 4;
        len -= 4;
        if (len % 2 != 0 || len / 2 > sizeof(auth->buffer)) {
            PH_ERR(MOD, "%s: hex value has odd length or exceeds %zu bytes", what,
                   sizeof(auth->buffer));
            return PROVHSM_E_CONFIG;
        }
        for (size_t i = 0; i < len / 2; i++) {
            int hi = provhsm_hex_digit_value((unsigned char)text[2 * i]);
            int lo = provhsm_hex_digit_value((unsigned char)text[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                PH_ERR(MOD, "%s: not a hex value after \"hex:\"", what);
                return PROVHSM_E_CONFIG;
            }
            auth->buffer[i] = (BYTE)(hi << 4 | lo);
        }
        auth->size = (UINT16)(len / 2);
        return PROVHSM_OK;
    }
    if (len > sizeof(auth->buffer)) {
        PH_ERR(MOD, "%s: value exceeds %zu bytes", what, sizeof(auth->buffer));
        return PROVHSM_E_CONFIG;
    }
    memcpy(auth->buffer, text, len);
    auth->size = (UINT16)len;
    return PROVHSM_OK;
}
