/*
 * Encodings the SDK uses on the wire, written to match the SDK byte for byte:
 * base64 (RFC 4648, padded), lowercase base32 without padding (TPM registration ids),
 * and the SDK's URL encoding (unreserved: A-Z a-z 0-9 ! ( ) * - . _ ; lowercase hex;
 * bytes >= 0x80 are encoded as if they were Latin-1 code points turned into UTF-8,
 * as the SDK's c-utility does).
 * Outputs are malloc'd; NULL on failure.
 */
#ifndef PROVHSM_ENCODING_H
#define PROVHSM_ENCODING_H

#include <stddef.h>
#include <stdint.h>

#include "provhsm/provhsm.h" /* provhsm_base64_encode, provhsm_base64_decode_text,
                                provhsm_tpm_registration_id: public */

/*
 * Strict decode: rejects characters outside the alphabet, bad padding and bad length.
 * The output is secure memory (it is usually a key): free with provhsm_secure_free().
 * Returns NULL on any error.
 */
uint8_t *provhsm_base64_decode(const char *text, size_t *len_out);

/*
 * Strict decode into the caller's buffer, for short-lived secrets on a hot path (the
 * caller wipes it). cap must hold strlen(text) / 4 * 3 bytes. Returns 0, or -1 on a
 * malformed input or a buffer too small (nothing is written then).
 */
int provhsm_base64_decode_into(const char *text, uint8_t *out, size_t cap, size_t *len_out);

char *provhsm_base32_encode_lower_nopad(const uint8_t *data, size_t len);

char *provhsm_url_encode(const char *text);

/* Lowercase hex, and hex with ':' between bytes (fingerprints). */
char *provhsm_hex_encode(const uint8_t *data, size_t len, int colons);

/* The value of one hex digit of either case (c as an unsigned char), -1 for anything else. */
int provhsm_hex_digit_value(int c);

#endif
