/*
 * Serialization of stored identities (see identity.h for the record format). Decoding
 * checks every length against what remains; anything unexpected is PROVHSM_E_CORRUPT.
 * Serialized records hold private keys, so they are built in secure memory.
 */
#include <stdlib.h>
#include <string.h>

#include "encoding.h"
#include "identity.h"
#include "log.h"
#include "secmem.h"

#define MOD "identity"

static const uint8_t record_magic[4] = {'P', 'H', 'I', '1'};

enum { KIND_X509 = 1, KIND_SYMMETRIC = 2 };
enum {
    TAG_KEY_PEM = 1,
    TAG_CHAIN_PEM = 2,
    TAG_REGISTRATION_ID = 3,
    TAG_SYMMETRIC_KEY = 4,
    TAG_KEY_SECRET = 5 /* a hardware key's secret (the TPM key's authorisation value) */
};
#define TAG_MAX   5
#define FIELD_MAX (512u * 1024u)

typedef struct field {
    uint8_t tag;
    const char *value; /* NULL: field absent */
} field;

static size_t record_size(const field *fields, size_t n)
{
    size_t total = sizeof(record_magic) + 1;
    for (size_t i = 0; i < n; i++)
        if (fields[i].value != NULL)
            total += 5 + strlen(fields[i].value);
    return total;
}

static provhsm_err record_write(provhsm_store *st, const char *entry, uint8_t kind,
                                const field *fields, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (fields[i].value != NULL && strlen(fields[i].value) > FIELD_MAX)
            return PROVHSM_E_INVALID_ARG;

    size_t total = record_size(fields, n);
    uint8_t *buf = provhsm_secure_alloc(total);
    if (buf == NULL)
        return PROVHSM_E_NOMEM;

    size_t off = 0;
    memcpy(buf, record_magic, sizeof(record_magic));
    off += sizeof(record_magic);
    buf[off++] = kind;
    for (size_t i = 0; i < n; i++) {
        if (fields[i].value == NULL)
            continue;
        uint32_t len = (uint32_t)strlen(fields[i].value);
        buf[off++] = fields[i].tag;
        buf[off++] = (uint8_t)(len >> 24);
        buf[off++] = (uint8_t)(len >> 16);
        buf[off++] = (uint8_t)(len >> 8);
        buf[off++] = (uint8_t)len;
        memcpy(buf + off, fields[i].value, len);
        off += len;
    }
    provhsm_err err = provhsm_store_put(st, entry, buf, total);
    provhsm_secure_free(buf);
    return err;
}

/* Which fields hold secrets: they are decoded into secure memory, the others into malloc. */
static int tag_is_secret(uint8_t tag)
{
    return tag == TAG_KEY_PEM || tag == TAG_SYMMETRIC_KEY || tag == TAG_KEY_SECRET;
}

#define TAG_BIT(tag) (1u << (tag))

/*
 * One decoded field and how it was allocated, so that releasing it never depends on a
 * second, separately kept idea of which fields are secret (a plain block handed to
 * provhsm_secure_free() aborts the process).
 */
typedef struct parsed_field {
    char *value; /* NULL: field absent */
    int secure;  /* value came from provhsm_secure_alloc() */
} parsed_field;

static void fields_release(parsed_field f[TAG_MAX + 1])
{
    for (int t = 0; t <= TAG_MAX; t++) {
        if (f[t].secure)
            provhsm_secure_free(f[t].value);
        else
            free(f[t].value);
        f[t].value = NULL;
        f[t].secure = 0;
    }
}

/* Moves a field's value out; its allocation is the one tag_is_secret() names. */
static char *field_take(parsed_field *f)
{
    char *value = f->value;
    f->value = NULL;
    f->secure = 0;
    return value;
}

static provhsm_err field_copy(parsed_field *f, uint8_t tag, const uint8_t *bytes, uint32_t len)
{
    int secure = tag_is_secret(tag);
    char *copy = secure ? provhsm_secure_alloc((size_t)len + 1) : malloc((size_t)len + 1);
    if (copy == NULL)
        return PROVHSM_E_NOMEM;
    memcpy(copy, bytes, len);
    copy[len] = '\0';
    f->value = copy;
    f->secure = secure;
    return PROVHSM_OK;
}

/*
 * Splits a record of `kind` into per-tag strings. Only the tags in `allowed` may appear,
 * each at most once, and every tag in `required` must. On error nothing is left allocated.
 */
static provhsm_err record_parse(const char *entry, const uint8_t *buf, size_t len, uint8_t kind,
                                unsigned allowed, unsigned required, parsed_field out[TAG_MAX + 1])
{
    provhsm_err err = PROVHSM_E_CORRUPT;
    size_t off = sizeof(record_magic) + 1;
    unsigned seen = 0;

    memset(out, 0, sizeof(parsed_field) * (TAG_MAX + 1));
    if (len < off || memcmp(buf, record_magic, sizeof(record_magic)) != 0 ||
        buf[sizeof(record_magic)] != kind) {
        PH_ERR(MOD, "stored identity '%s' has an unknown format", entry);
        goto out;
    }
    while (off < len) {
        if (len - off < 5)
            goto truncated;
        uint8_t tag = buf[off];
        uint32_t flen = ((uint32_t)buf[off + 1] << 24) | ((uint32_t)buf[off + 2] << 16) |
                        ((uint32_t)buf[off + 3] << 8) | buf[off + 4];
        off += 5;
        if (tag > TAG_MAX || !(allowed & TAG_BIT(tag)) || (seen & TAG_BIT(tag))) {
            PH_ERR(MOD, "stored identity '%s' has an unexpected or repeated field %u", entry, tag);
            goto out;
        }
        if (flen > len - off)
            goto truncated;
        if (memchr(buf + off, '\0', flen) != NULL) {
            PH_ERR(MOD, "stored identity '%s': field %u contains a NUL byte", entry, tag);
            goto out;
        }
        err = field_copy(&out[tag], tag, buf + off, flen);
        if (err != PROVHSM_OK)
            goto out;
        err = PROVHSM_E_CORRUPT;
        seen |= TAG_BIT(tag);
        off += flen;
    }
    if ((seen & required) != required) {
        PH_ERR(MOD, "stored identity '%s' lacks a required field", entry);
        goto out;
    }
    return PROVHSM_OK;

truncated:
    PH_ERR(MOD, "stored identity '%s' is truncated", entry);
out:
    fields_release(out);
    return err;
}

static provhsm_err record_load(provhsm_store *st, const char *entry, uint8_t kind, unsigned allowed,
                               unsigned required, parsed_field out[TAG_MAX + 1])
{
    uint8_t *buf = NULL;
    size_t len = 0;
    provhsm_err err = provhsm_store_get(st, entry, &buf, &len);
    if (err != PROVHSM_OK)
        return err;
    err = record_parse(entry, buf, len, kind, allowed, required, out);
    provhsm_secure_free(buf);
    return err;
}

provhsm_err provhsm_identity_x509_load(provhsm_store *st, const char *entry,
                                       provhsm_x509_identity *out)
{
    parsed_field fields[TAG_MAX + 1];
    if (st == NULL || entry == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err err =
        record_load(st, entry, KIND_X509,
                    TAG_BIT(TAG_KEY_PEM) | TAG_BIT(TAG_CHAIN_PEM) | TAG_BIT(TAG_KEY_SECRET),
                    TAG_BIT(TAG_KEY_PEM), fields);
    if (err != PROVHSM_OK)
        return err;
    out->key_pem = field_take(&fields[TAG_KEY_PEM]);       /* secure, as identity.h says */
    out->chain_pem = field_take(&fields[TAG_CHAIN_PEM]);   /* plain malloc */
    out->key_secret = field_take(&fields[TAG_KEY_SECRET]); /* secure */
    fields_release(fields);
    return PROVHSM_OK;
}

provhsm_err provhsm_identity_x509_save(provhsm_store *st, const char *entry,
                                       const provhsm_x509_identity *id)
{
    if (st == NULL || entry == NULL || id == NULL || id->key_pem == NULL)
        return PROVHSM_E_INVALID_ARG;
    const field fields[] = {{TAG_KEY_PEM, id->key_pem},
                            {TAG_CHAIN_PEM, id->chain_pem},
                            {TAG_KEY_SECRET, id->key_secret}};
    return record_write(st, entry, KIND_X509, fields, 3);
}

void provhsm_identity_x509_clear(provhsm_x509_identity *id)
{
    if (id == NULL)
        return;
    provhsm_secure_free(id->key_pem);
    free(id->chain_pem);
    provhsm_secure_free(id->key_secret);
    id->key_pem = NULL;
    id->chain_pem = NULL;
    id->key_secret = NULL;
}

provhsm_err provhsm_identity_symmetric_load(provhsm_store *st, provhsm_symmetric_identity *out)
{
    parsed_field fields[TAG_MAX + 1];
    if (st == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    const unsigned both = TAG_BIT(TAG_REGISTRATION_ID) | TAG_BIT(TAG_SYMMETRIC_KEY);
    provhsm_err err = record_load(st, PROVHSM_ENTRY_SYMMETRIC, KIND_SYMMETRIC, both, both, fields);
    if (err != PROVHSM_OK)
        return err;
    out->registration_id = field_take(&fields[TAG_REGISTRATION_ID]); /* plain malloc */
    out->key_b64 = field_take(&fields[TAG_SYMMETRIC_KEY]);           /* secure */
    fields_release(fields);
    return PROVHSM_OK;
}

provhsm_err provhsm_identity_symmetric_save(provhsm_store *st, const provhsm_symmetric_identity *id)
{
    if (st == NULL || id == NULL || id->registration_id == NULL || id->key_b64 == NULL)
        return PROVHSM_E_INVALID_ARG;
    const field fields[] = {{TAG_REGISTRATION_ID, id->registration_id},
                            {TAG_SYMMETRIC_KEY, id->key_b64}};
    return record_write(st, PROVHSM_ENTRY_SYMMETRIC, KIND_SYMMETRIC, fields, 2);
}

void provhsm_identity_symmetric_clear(provhsm_symmetric_identity *id)
{
    if (id == NULL)
        return;
    free(id->registration_id);
    provhsm_secure_free(id->key_b64);
    id->registration_id = NULL;
    id->key_b64 = NULL;
}

provhsm_err provhsm_identity_check_registration_id(const char *id)
{
    size_t n = id != NULL ? strlen(id) : 0;
    if (n == 0 || n > 128) {
        PH_ERR(MOD, "registration id must be 1 to 128 characters");
        return PROVHSM_E_INVALID_ARG;
    }
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '.' || c == '_' || c == ':';
        if (!ok) {
            PH_ERR(MOD, "registration id may contain only a-z A-Z 0-9 - . _ : (position %zu)",
                   i + 1);
            return PROVHSM_E_INVALID_ARG;
        }
    }
    return PROVHSM_OK;
}

provhsm_err provhsm_identity_check_symmetric_key(const char *key_b64)
{
    size_t len = 0;
    uint8_t *raw = key_b64 != NULL ? provhsm_base64_decode(key_b64, &len) : NULL;
    if (raw == NULL) {
        PH_ERR(MOD, "symmetric key is not valid base64");
        return PROVHSM_E_INVALID_ARG;
    }
    provhsm_secure_free(raw);
    if (len < 16) {
        PH_ERR(MOD, "symmetric key is too short (%zu bytes; at least 16 expected)", len);
        return PROVHSM_E_INVALID_ARG;
    }
    return PROVHSM_OK;
}
