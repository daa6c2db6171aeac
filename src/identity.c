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
enum { TAG_KEY_PEM = 1, TAG_CHAIN_PEM = 2, TAG_REGISTRATION_ID = 3, TAG_SYMMETRIC_KEY = 4 };
#define TAG_MAX   4
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

/*
 * Splits a record into per-tag strings. Secret tags (`secret_mask` bit set) are copied
 * to secure memory, the others to plain malloc. On error every copy is freed.
 */
static provhsm_err record_parse(const uint8_t *buf, size_t len, uint8_t kind, unsigned secret_mask,
                                char *out[TAG_MAX + 1])
{
    provhsm_err err = PROVHSM_E_CORRUPT;
    size_t off = sizeof(record_magic) + 1;

    for (int t = 0; t <= TAG_MAX; t++)
        out[t] = NULL;
    if (len < off || memcmp(buf, record_magic, sizeof(record_magic)) != 0 ||
        buf[sizeof(record_magic)] != kind) {
        PH_ERR(MOD, "stored identity has an unknown format");
        goto out;
    }
    while (off < len) {
        if (len - off < 5)
            goto truncated;
        uint8_t tag = buf[off];
        uint32_t flen = ((uint32_t)buf[off + 1] << 24) | ((uint32_t)buf[off + 2] << 16) |
                        ((uint32_t)buf[off + 3] << 8) | buf[off + 4];
        off += 5;
        if (tag == 0 || tag > TAG_MAX || out[tag] != NULL) {
            PH_ERR(MOD, "stored identity has an unexpected field %u", tag);
            goto out;
        }
        if (flen > len - off)
            goto truncated;
        if (memchr(buf + off, '\0', flen) != NULL) {
            PH_ERR(MOD, "stored identity field %u contains a NUL byte", tag);
            goto out;
        }
        int secret = (secret_mask >> tag) & 1u;
        char *copy = secret ? provhsm_secure_alloc((size_t)flen + 1) : malloc((size_t)flen + 1);
        if (copy == NULL) {
            err = PROVHSM_E_NOMEM;
            goto out;
        }
        memcpy(copy, buf + off, flen);
        copy[flen] = '\0';
        out[tag] = copy;
        off += flen;
    }
    return PROVHSM_OK;

truncated:
    PH_ERR(MOD, "stored identity is truncated");
out:
    for (int t = 0; t <= TAG_MAX; t++) {
        if ((secret_mask >> t) & 1u)
            provhsm_secure_free(out[t]);
        else
            free(out[t]);
        out[t] = NULL;
    }
    return err;
}

static provhsm_err record_load(provhsm_store *st, const char *entry, uint8_t kind,
                               unsigned secret_mask, char *out[TAG_MAX + 1])
{
    uint8_t *buf = NULL;
    size_t len = 0;
    provhsm_err err = provhsm_store_get(st, entry, &buf, &len);
    if (err != PROVHSM_OK)
        return err;
    err = record_parse(buf, len, kind, secret_mask, out);
    provhsm_secure_free(buf);
    return err;
}

provhsm_err provhsm_identity_x509_load(provhsm_store *st, const char *entry,
                                       provhsm_x509_identity *out)
{
    char *fields[TAG_MAX + 1];
    if (st == NULL || entry == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err err = record_load(st, entry, KIND_X509, 1u << TAG_KEY_PEM, fields);
    if (err != PROVHSM_OK)
        return err;
    if (fields[TAG_KEY_PEM] == NULL || fields[TAG_REGISTRATION_ID] != NULL ||
        fields[TAG_SYMMETRIC_KEY] != NULL) {
        PH_ERR(MOD, "stored X.509 identity '%s' lacks its key or holds foreign fields", entry);
        provhsm_secure_free(fields[TAG_KEY_PEM]);
        free(fields[TAG_CHAIN_PEM]);
        free(fields[TAG_REGISTRATION_ID]);
        provhsm_secure_free(fields[TAG_SYMMETRIC_KEY]);
        return PROVHSM_E_CORRUPT;
    }
    out->key_pem = fields[TAG_KEY_PEM];
    out->chain_pem = fields[TAG_CHAIN_PEM];
    return PROVHSM_OK;
}

provhsm_err provhsm_identity_x509_save(provhsm_store *st, const char *entry,
                                       const provhsm_x509_identity *id)
{
    if (st == NULL || entry == NULL || id == NULL || id->key_pem == NULL)
        return PROVHSM_E_INVALID_ARG;
    const field fields[] = {{TAG_KEY_PEM, id->key_pem}, {TAG_CHAIN_PEM, id->chain_pem}};
    return record_write(st, entry, KIND_X509, fields, 2);
}

void provhsm_identity_x509_clear(provhsm_x509_identity *id)
{
    if (id == NULL)
        return;
    provhsm_secure_free(id->key_pem);
    free(id->chain_pem);
    id->key_pem = NULL;
    id->chain_pem = NULL;
}

provhsm_err provhsm_identity_symmetric_load(provhsm_store *st, provhsm_symmetric_identity *out)
{
    char *fields[TAG_MAX + 1];
    if (st == NULL || out == NULL)
        return PROVHSM_E_INVALID_ARG;
    provhsm_err err = record_load(st, PROVHSM_ENTRY_SYMMETRIC, KIND_SYMMETRIC,
                                  (1u << TAG_SYMMETRIC_KEY) | (1u << TAG_KEY_PEM), fields);
    if (err != PROVHSM_OK)
        return err;
    if (fields[TAG_REGISTRATION_ID] == NULL || fields[TAG_SYMMETRIC_KEY] == NULL ||
        fields[TAG_KEY_PEM] != NULL || fields[TAG_CHAIN_PEM] != NULL) {
        PH_ERR(MOD, "stored symmetric identity is incomplete");
        free(fields[TAG_REGISTRATION_ID]);
        provhsm_secure_free(fields[TAG_SYMMETRIC_KEY]);
        provhsm_secure_free(fields[TAG_KEY_PEM]);
        free(fields[TAG_CHAIN_PEM]);
        return PROVHSM_E_CORRUPT;
    }
    out->registration_id = fields[TAG_REGISTRATION_ID];
    out->key_b64 = fields[TAG_SYMMETRIC_KEY];
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
