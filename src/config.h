/*
 * Configuration: built-in defaults, then one INI file ($PROVHSM_CONFIG, else
 * /etc/provhsm/provhsm.conf when it exists), then environment overrides
 * (PROVHSM_STORE, PROVHSM_LOG, PROVHSM_TCTI, PROVHSM_PASSPHRASE).
 * Every key is documented in docs/configuration.md. Unknown sections or keys and bad
 * values are errors that name the file and the line.
 *
 * The struct holds no secrets: passphrases and TPM authorisations are named by
 * environment variable or file and read only where they are used.
 */
#ifndef PROVHSM_CONFIG_H
#define PROVHSM_CONFIG_H

#include <stdint.h>
#include "provhsm/provhsm.h"

#define PROVHSM_PATH_MAX 4096
#define PROVHSM_NAME_MAX 32

typedef struct provhsm_config {
    /* where the configuration came from ("built-in defaults" or a path) */
    char source[PROVHSM_PATH_MAX];

    /* [store] */
    char store_dir[PROVHSM_PATH_MAX];       /* directory, 0700 */
    char key_file[PROVHSM_PATH_MAX];        /* store key file; "" = <store_dir>/store.key */
    char passphrase_file[PROVHSM_PATH_MAX]; /* file holding the passphrase; "" = none */
    char passphrase_env[PROVHSM_NAME_MAX];  /* env var holding the passphrase */
    uint8_t scrypt_log2_n;                  /* scrypt cost N = 2^log2_n, for new stores */
    uint32_t scrypt_r, scrypt_p;
    /* stores whose key is sealed to the TPM (provhsm init --seal-to-tpm) */
    char seal_pcrs[64];         /* as written, "" = no PCR binding ("sha256:0,7") */
    uint16_t seal_pcr_bank;     /* TPM2_ALG_SHA1/SHA256/SHA384/SHA512, 0 = none */
    uint32_t seal_pcr_mask;     /* bit n = PCR n (0..23) */
    uint32_t sealed_key_handle; /* persistent handle of the sealed key; 0 = blob file */

    /* backend per attestation: "software", "tpm", "pkcs11" (X.509 only) */
    char x509_backend[PROVHSM_NAME_MAX];
    char symmetric_backend[PROVHSM_NAME_MAX];
    char tpm_backend[PROVHSM_NAME_MAX];

    /* [tpm] */
    int tpm_configured; /* a [tpm] section or PROVHSM_TCTI was seen */
    char tcti[512];
    uint32_t ek_handle, srk_handle, identity_handle;
    char owner_auth_file[PROVHSM_PATH_MAX];
    char owner_auth_env[PROVHSM_NAME_MAX];
    char endorsement_auth_file[PROVHSM_PATH_MAX];
    char endorsement_auth_env[PROVHSM_NAME_MAX];
    uint32_t x509_key_handle; /* the X.509 device key made by `x509 generate` */

    /* [pkcs11]: X.509 keys on a token */
    char pkcs11_module[PROVHSM_PATH_MAX];   /* the module (.so); "" = those p11-kit registers */
    char pkcs11_token[PROVHSM_PATH_MAX];    /* RFC 7512 URI selecting the token */
    char pkcs11_pin_file[PROVHSM_PATH_MAX]; /* file holding the user PIN; "" = none */
    char pkcs11_pin_env[PROVHSM_NAME_MAX];  /* env var holding the PIN */

    /* [log] */
    int log_level; /* -1 = not set in the file */
} provhsm_config;

/* Fills cfg with built-in defaults (store under /var/lib or $XDG_DATA_HOME by uid). */
void provhsm_config_defaults(provhsm_config *cfg);

/*
 * Applies INI text to cfg. `origin` names the text in error messages. On error, logs
 * "<origin>:<line>: <reason>" and, when errbuf is non-NULL, writes the same there.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_config_parse(provhsm_config *cfg, const char *text,
                                                    const char *origin, char *errbuf,
                                                    size_t errlen);

/* Reads and applies one file. A missing file is PROVHSM_E_NOT_FOUND. */
PROVHSM_MUST_CHECK provhsm_err provhsm_config_parse_file(provhsm_config *cfg, const char *path,
                                                         char *errbuf, size_t errlen);

/* Applies PROVHSM_STORE, PROVHSM_LOG, PROVHSM_TCTI. Bad values are errors. */
PROVHSM_MUST_CHECK provhsm_err provhsm_config_apply_env(provhsm_config *cfg);

/*
 * The whole chain: defaults, file (explicit path, else $PROVHSM_CONFIG, else
 * /etc/provhsm/provhsm.conf if present), environment.
 */
PROVHSM_MUST_CHECK provhsm_err provhsm_config_load(provhsm_config *cfg, const char *explicit_path);

/* Effective key file path: key_file, or <store_dir>/store.key. */
void provhsm_config_key_file(const provhsm_config *cfg, char *out, size_t outlen);

/*
 * 1 when the TCTI string `tcti` goes through a resource manager that releases a client's
 * transient objects and sessions when its connection closes: tpm2-abrmd ("tabrmd",
 * "tabrmd:<conf>") or the kernel's ("device:/dev/tpmrm<N>"). 0 for anything else: a
 * bare /dev/tpm<N>, a simulator, an unknown TCTI, "" (the TCTI loader's choice, which
 * is not known here) and NULL. The TCTI name may also be given as its library's file
 * name (libtss2-tcti-tabrmd.so.0, libtss2-tcti-device.so).
 */
int provhsm_tcti_releases_on_close(const char *tcti);

#endif
