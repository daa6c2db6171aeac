/*
 * Wire encodings that must agree byte for byte with the Azure IoT SDK's c-utility:
 * base64 (OpenSSL's EVP_EncodeBlock/EVP_DecodeBlock behind a strict validator of our
 * own), lowercase unpadded base32 (TPM registration ids), the SDK's URL encoding (SAS
 * token scope and signature) and hex, and the TPM registration id built from them.
 * Callers: the SAS token builder, the symmetric-key code and the admin API, x509util
 * (fingerprints), and through the public API the provhsm tool.
 * Nothing is kept static but constant tables.
 *
 * Conventions shared by every function here: outputs are malloc'd NUL-terminated
 * strings (base64 decode: secure memory, see encoding.h); NULL input or a failed
 * allocation gives NULL; empty input gives "" from the encoders.
 *
 * Decisions not spelled out in encoding.h:
 * - base64 decode accepts only the canonical form: length a multiple of 4, alphabet
 *   A-Z a-z 0-9 + /, one or two '=' only at the very end, no whitespace, and the unused
 *   low bits of the last symbol before '=' set to zero (so every byte string has exactly
 *   one accepted encoding). "" decodes to an empty buffer (len 0).
 *   provhsm_base64_decode_text (public, for text from files and the service) first drops
 *   ASCII whitespace, then applies the same rules, and refuses an empty result.
 * - provhsm_hex_encode(colons = 0) is lowercase without separators ("0aff");
 *   colons != 0 is UPPERCASE with ':' between bytes ("0A:FF"), the usual way
 *   fingerprints are shown.
 * - URL encoding: A-Z a-z 0-9 ! ( ) * - . _ stay as they are ('~' does not); any
 *   other byte below 0x80 becomes %xx; a byte b >= 0x80 is taken as the Latin-1 code
 *   point b and written as its two-byte UTF-8 form, percent-encoded:
 *   0x80..0xBF -> %c2%xx (xx = b), 0xC0..0xFF -> %c3%xx (xx = b - 0x40). Hex digits are
 *   lowercase. This is what the SDK signs, so a SAS token only verifies when both sides
 *   encode the scope this way.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>

#include "encoding.h"
#include "log.h"
#include "secmem.h"

#define MOD "encoding"

/* Largest input EVP_EncodeBlock's int lengths take without overflow (~768 MiB). */
#define B64_MAX_RAW ((size_t)(INT_MAX / 4) * 3 - 3)

static const char b32_alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
static const char hex_lower[] = "0123456789abcdef";
static const char hex_upper[] = "0123456789ABCDEF";

/* ---- base64 ------------------------------------------------------------- */

char *provhsm_base64_encode(const uint8_t *data, size_t len)
{
    if (data == NULL || len > B64_MAX_RAW)
        return NULL;
    size_t out_len = (len + 2) / 3 * 4;
    char *out = malloc(out_len + 1);
    if (out == NULL)
        return NULL;
    /* EVP_EncodeBlock writes the terminating NUL itself, also for len == 0. */
    int n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    if (n < 0 || (size_t)n != out_len) {
        free(out);
        return NULL;
    }
    return out;
}

/* Value of one base64 symbol, -1 for anything outside the alphabet (including '='). */
static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/*
 * Checks `text` (n bytes) is canonical padded base64. On success returns 1 and the
 * number of bytes it decodes to; otherwise 0 and a reason for the debug log.
 */
static int b64_check(const char *text, size_t n, size_t *decoded_len, const char **why)
{
    size_t pad = 0;

    if (n % 4 != 0) {
        *why = "length is not a multiple of 4";
        return 0;
    }
    if (n > (size_t)INT_MAX) {
        *why = "too long";
        return 0;
    }
    if (n > 0 && text[n - 1] == '=')
        pad++;
    if (n > 1 && text[n - 2] == '=')
        pad++;
    for (size_t i = 0; i < n - pad; i++) {
        if (b64_value((unsigned char)text[i]) < 0) {
            *why = text[i] == '=' ? "padding before the end" : "character outside the alphabet";
            return 0;
        }
    }
    if (pad > 0) {
        /* n >= 4 here, and text[n - pad - 1] passed the loop above. */
        int last = b64_value((unsigned char)text[n - pad - 1]);
        int unused_mask = pad == 1 ? 0x03 : 0x0f;
        if ((last & unused_mask) != 0) {
            *why = "non-zero bits before the padding";
            return 0;
        }
    }
    *decoded_len = n / 4 * 3 - pad;
    return 1;
}

uint8_t *provhsm_base64_decode(const char *text, size_t *len_out)
{
    const char *why = NULL;
    size_t n, decoded_len = 0;
    uint8_t *out = NULL;

    if (text == NULL || len_out == NULL)
        return NULL;
    n = strlen(text);
    if (!b64_check(text, n, &decoded_len, &why)) {
        /* Never log the text: it is usually a key. */
        PH_DEBUG(MOD, "base64 input of %zu characters rejected: %s", n, why);
        return NULL;
    }
    /* EVP_DecodeBlock writes whole groups of 3 (the padding decodes to zero bytes). */
    out = provhsm_secure_alloc(n / 4 * 3 + 1);
    if (out == NULL)
        return NULL;
    if (n > 0 && EVP_DecodeBlock(out, (const unsigned char *)text, (int)n) != (int)(n / 4 * 3)) {
        provhsm_log_openssl(MOD, "EVP_DecodeBlock");
        provhsm_secure_free(out);
        return NULL;
    }
    *len_out = decoded_len;
    return out;
}

int provhsm_base64_decode_into(const char *text, uint8_t *out, size_t cap, size_t *len_out)
{
    const char *why = NULL;
    size_t n, decoded_len = 0;

    if (text == NULL || out == NULL || len_out == NULL)
        return -1;
    n = strlen(text);
    if (!b64_check(text, n, &decoded_len, &why)) {
        PH_DEBUG(MOD, "base64 input of %zu characters rejected: %s", n, why);
        return -1;
    }
    if (n / 4 * 3 > cap)
        return -1;
    if (n > 0 && EVP_DecodeBlock(out, (const unsigned char *)text, (int)n) != (int)(n / 4 * 3)) {
        provhsm_log_openssl(MOD, "EVP_DecodeBlock");
        provhsm_wipe(out, cap);
        return -1;
    }
    *len_out = decoded_len;
    return 0;
}

static int is_ascii_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

provhsm_err provhsm_base64_decode_text(const char *text, size_t len, uint8_t **out, size_t *out_len)
{
    provhsm_err err = PROVHSM_E_INVALID_ARG;
    uint8_t *plain = NULL, *copy = NULL;
    size_t n = 0, plain_len = 0;

    if (text == NULL || out == NULL || out_len == NULL || len == SIZE_MAX)
        return PROVHSM_E_INVALID_ARG;
    /* secure: the text may be a key */
    char *packed = provhsm_secure_alloc(len + 1);
    if (packed == NULL)
        return PROVHSM_E_NOMEM;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '\0')
            goto out; /* a NUL would end the text early */
        if (!is_ascii_space(c))
            packed[n++] = (char)c;
    }
    packed[n] = '\0';
    plain = provhsm_base64_decode(packed, &plain_len);
    if (plain == NULL || plain_len == 0)
        goto out;
    err = PROVHSM_E_NOMEM;
    copy = malloc(plain_len);
    if (copy == NULL)
        goto out;
    memcpy(copy, plain, plain_len);
    *out = copy;
    *out_len = plain_len;
    err = PROVHSM_OK;
out:
    provhsm_secure_free(plain);
    provhsm_secure_free(packed);
    return err;
}

/* ---- base32 ------------------------------------------------------------- */

char *provhsm_base32_encode_lower_nopad(const uint8_t *data, size_t len)
{
    if (data == NULL || len > (SIZE_MAX - 4) / 8)
        return NULL;
    size_t out_len = (len * 8 + 4) / 5;
    char *out = malloc(out_len + 1);
    if (out == NULL)
        return NULL;

    unsigned acc = 0; /* holds at most 12 pending bits */
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        acc = ((acc << 8) | data[i]) & 0xfffu;
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            out[o++] = b32_alphabet[(acc >> bits) & 0x1f];
        }
    }
    if (bits > 0)
        out[o++] = b32_alphabet[(acc << (5 - bits)) & 0x1f];
    out[o] = '\0';
    return out;
}

/* ---- TPM registration id ------------------------------------------------- */

provhsm_err provhsm_tpm_registration_id(const uint8_t *ek, size_t len, char **id_out)
{
    unsigned char md[32];
    unsigned int md_len = 0;

    if (ek == NULL || len == 0 || id_out == NULL)
        return PROVHSM_E_INVALID_ARG;
    if (EVP_Digest(ek, len, md, &md_len, EVP_sha256(), NULL) != 1 || md_len != sizeof(md)) {
        provhsm_log_openssl(MOD, "SHA-256 of the endorsement key");
        return PROVHSM_E_CRYPTO;
    }
    char *id = provhsm_base32_encode_lower_nopad(md, md_len);
    if (id == NULL)
        return PROVHSM_E_NOMEM;
    *id_out = id;
    return PROVHSM_OK;
}

/* ---- URL encoding --------------------------------------------------------- */

static int url_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '!' ||
           c == '(' || c == ')' || c == '*' || c == '-' || c == '.' || c == '_';
}

/* Writes the encoding of one byte into out (room for 6) and returns its length. */
static size_t url_encode_byte(unsigned char c, char *out)
{
    if (url_unreserved(c)) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x80) {
        out[0] = '%';
        out[1] = hex_lower[c >> 4];
        out[2] = hex_lower[c & 0x0f];
        return 3;
    }
    /* Latin-1 code point c as UTF-8: 0xC2 or 0xC3, then 0x80 | (c & 0x3f). */
    unsigned char second = c < 0xC0 ? c : (unsigned char)(c - 0x40);
    out[0] = '%';
    out[1] = 'c';
    out[2] = c < 0xC0 ? '2' : '3';
    out[3] = '%';
    out[4] = hex_lower[second >> 4];
    out[5] = hex_lower[second & 0x0f];
    return 6;
}

char *provhsm_url_encode(const char *text)
{
    char scratch[6];
    size_t out_len = 0;

    if (text == NULL)
        return NULL;
    for (const unsigned char *p = (const unsigned char *)text; *p != '\0'; p++) {
        size_t one = url_encode_byte(*p, scratch);
        if (out_len > SIZE_MAX - 1 - one)
            return NULL;
        out_len += one;
    }
    char *out = malloc(out_len + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p != '\0'; p++)
        o += url_encode_byte(*p, out + o);
    out[o] = '\0';
    return out;
}

/* ---- hex ---------------------------------------------------------------- */

char *provhsm_hex_encode(const uint8_t *data, size_t len, int colons)
{
    const char *digits = colons ? hex_upper : hex_lower;
    size_t per_byte = colons ? 3 : 2;

    if (data == NULL || len > (SIZE_MAX - 1) / 3)
        return NULL;
    char *out = malloc(len * per_byte + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (colons && i > 0)
            out[o++] = ':';
        out[o++] = digits[data[i] >> 4];
        out[o++] = digits[data[i] & 0x0f];
    }
    out[o] = '\0';
    return out;
}

int provhsm_hex_digit_value(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}
