/*
 * provhsm: the command-line tool a factory line or a developer uses to put device
 * identities into provhsm's store and to see what the Azure IoT SDK will read from it.
 * This file holds main(): global options, the command table with every --help text, and
 * dispatch. The commands live in cmd_*.c, shared code in cli_util.c.
 *
 * The tool uses only the public API (provhsm/provhsm.h) and the SDK's three tables, the
 * way the SDK itself does. Exit status: 0 success, 1 failure, 2 usage error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char usage_init[] =
    "Usage: provhsm init [--owner USER[:GROUP]] [--json]\n"
    "\n"
    "Creates the key store (directory 0700 and its key) named by the configuration, and\n"
    "prints its directory. Fails when a store already exists there.\n"
    "\n"
    "Run as root, every command works on a store owned by another user as that user\n"
    "(its uid, gid and groups), so files stay the owner's.\n"
    "\n"
    "Options:\n"
    "  --owner USER[:GROUP]  (as root) create the store for USER, the user the SDK\n"
    "            application runs as: the directory is created for USER (or an empty\n"
    "            one of root's is given to USER), then the store is made as USER\n"
    "  --seal-to-tpm  make a random store key sealed to the TPM of [tpm] (bound to the\n"
    "            PCRs of [store] seal_pcrs when set) instead of a key file or passphrase\n"
    "  --json    print {\"store_dir\": ...}\n"
    "  --help    print this help\n";

static const char usage_info[] =
    "Usage: provhsm info [--json]\n"
    "\n"
    "For each attestation (x509, symmetric, tpm): the configured backend, whether an\n"
    "identity is present (with the reason when not), and its registration id, read\n"
    "through the SDK's tables. For X.509 also the leaf certificate's subject, issuer,\n"
    "validity and SHA-256 fingerprint, and the length of the chain. Never prints a secret.\n"
    "\n"
    "Options:\n"
    "  --json    print one JSON object\n"
    "  --help    print this help\n";

static const char usage_x509_generate[] =
    "Usage: provhsm x509 generate --cn NAME [--curve p256 | --rsa BITS]\n"
    "                             (--self-signed [--days N] | --csr FILE) [--force] [--json]\n"
    "\n"
    "Generates the device key inside the store (it is never written in clear), or with\n"
    "[x509] backend = tpm or pkcs11 in the TPM or on the token (it never leaves it), and\n"
    "either\n"
    "a self-signed certificate, which becomes the X.509 identity (its SHA-256 fingerprint\n"
    "is the thumbprint an individual enrollment needs), or a certificate request to be\n"
    "signed by a CA and brought back with 'provhsm x509 import --cert'. The key of a\n"
    "pending request waits for that certificate; a new --csr is refused without --force.\n"
    "\n"
    "Options:\n"
    "  --cn NAME        subject common name = the registration id\n"
    "  --curve CURVE    EC key on p256 (the default) or p384\n"
    "  --rsa BITS       RSA key of 2048, 3072 or 4096 bits instead (software only: the\n"
    "                   SDK cannot sign with an RSA key in hardware)\n"
    "  --self-signed    make a self-signed certificate\n"
    "  --days N         its validity in days (default 365)\n"
    "  --csr FILE       write a PKCS#10 request (PEM) to FILE, mode 0644; '-' = stdout\n"
    "  --force          with --self-signed: replace an existing X.509 identity;\n"
    "                   with --csr: replace the key of a pending request (a certificate\n"
    "                   later signed for the old request then matches nothing)\n"
    "  --json           print the result as JSON\n"
    "  --help           print this help\n";

static const char usage_x509_adopt[] =
    "Usage: provhsm x509 adopt --key LOCATOR [--cert CHAIN.pem] [--force] [--json]\n"
    "\n"
    "Takes a key that is already in the TPM or on the PKCS#11 token ([x509] backend = tpm\n"
    "or pkcs11), made at the factory or with other tools, with its certificate chain, as\n"
    "the X.509 identity. The key is checked (EC P-256/P-384, a signing key, the leaf\n"
    "carries its public key) and signs once before anything is stored; RSA keys are\n"
    "refused (the SDK's TLS layer cannot sign with them in hardware).\n"
    "Without --cert (pkcs11 only) the chain is read from the token, as a secure element\n"
    "ships it: the certificate with the key's id (or public key), then the certificates\n"
    "on the token that issued it, up to a self-signed root.\n"
    "\n"
    "Options:\n"
    "  --key LOCATOR  TPM persistent handle (0x81000110) or PKCS#11 URI\n"
    "                 (pkcs11:token=...;id=%01;type=private)\n"
    "  --cert FILE    PEM certificate chain, leaf first ('-' = stdin); required for tpm\n"
    "  --force        replace an existing X.509 identity\n"
    "  --json         print the result as JSON\n"
    "  --help         print this help\n";

static const char usage_x509_import[] =
    "Usage: provhsm x509 import --cert CHAIN.pem [--key KEY.pem] [--json]\n"
    "\n"
    "Imports a certificate chain (leaf first, then intermediates). Without --key the leaf\n"
    "must belong to the key made by 'provhsm x509 generate --csr'; with --key, key and\n"
    "chain replace the identity together. A mismatched pair or a leaf without a common\n"
    "name is refused; an expired leaf is imported with a warning.\n"
    "\n"
    "Options:\n"
    "  --cert FILE    PEM certificate chain ('-' = stdin)\n"
    "  --key FILE     PEM private key ('-' = stdin)\n"
    "  --json         print the result as JSON\n"
    "  --help         print this help\n";

static const char usage_symmetric_set[] =
    "Usage: provhsm symmetric set --registration-id ID --key BASE64|- [--json]\n"
    "\n"
    "Stores a symmetric-key identity (individual enrollment).\n"
    "\n"
    "Options:\n"
    "  --registration-id ID   the device's registration id\n"
    "  --key BASE64           the device key; '-' reads one line from stdin, which keeps\n"
    "                         the key out of the process list\n"
    "  --json                 print the result as JSON\n"
    "  --help                 print this help\n";

static const char usage_symmetric_derive[] =
    "Usage: provhsm symmetric derive --registration-id ID --group-key BASE64|-\n"
    "                                [--print-only] [--json]\n"
    "\n"
    "Group enrollment: derives the device key, base64(HMAC-SHA256(group key, ID)), and\n"
    "stores it as the symmetric identity. The device key is printed only with --print-only,\n"
    "which stores nothing.\n"
    "\n"
    "Options:\n"
    "  --registration-id ID   the device's registration id\n"
    "  --group-key BASE64     the enrollment group's key; '-' reads one line from stdin\n"
    "  --print-only           print the device key instead of storing it\n"
    "  --json                 print the result as JSON\n"
    "  --help                 print this help\n";

static const char usage_sas_token[] =
    "Usage: provhsm sas-token --scope SCOPE --expiry SECONDS [--type symmetric|tpm]\n"
    "                         [--key-name NAME] [--json]\n"
    "\n"
    "Makes a SharedAccessSignature exactly as the SDK does, signed through the same table.\n"
    "For the provisioning service the scope is \"<id scope>/registrations/<registration id>\".\n"
    "\n"
    "Options:\n"
    "  --scope SCOPE      resource scope (URL-encoded by the tool the SDK's way)\n"
    "  --expiry SECONDS   lifetime from now, a positive number of seconds\n"
    "  --type TYPE        symmetric (the default) or tpm\n"
    "  --key-name NAME    skn value (default \"registration\")\n"
    "  --json             print {\"token\": ..., \"expiry\": ...}\n"
    "  --help             print this help\n";

static const char usage_export_cert[] =
    "Usage: provhsm export x509-cert\n"
    "\n"
    "Prints the X.509 identity's certificate chain (PEM, leaf first) exactly as the SDK\n"
    "reads it.\n"
    "\n"
    "Options:\n"
    "  --help    print this help\n";

static const char usage_tpm_info[] =
    "Usage: provhsm tpm info [--json]\n"
    "\n"
    "What an individual TPM enrollment needs: the registration id (base32 of SHA-256 of\n"
    "the EK) and the endorsement key, plus the storage root key, both base64 of their\n"
    "TPM2B_PUBLIC as the SDK sends them.\n"
    "\n"
    "Options:\n"
    "  --json    print one JSON object\n"
    "  --help    print this help\n";

static const char usage_tpm_activate[] =
    "Usage: provhsm tpm activate --blob FILE|-\n"
    "\n"
    "Imports the identity key from the provisioning service's activation blob\n"
    "(authenticationKey), binary or base64 text, and makes it persistent.\n"
    "\n"
    "Options:\n"
    "  --blob FILE   the blob ('-' = stdin)\n"
    "  --help        print this help\n";

static const char usage_tpm_sign[] =
    "Usage: provhsm tpm sign (--data STRING | --file FILE) [--json]\n"
    "\n"
    "HMAC-SHA256 with the TPM identity key, as sign_with_identity does; prints base64.\n"
    "\n"
    "Options:\n"
    "  --data STRING   the bytes of STRING\n"
    "  --file FILE     the bytes of FILE ('-' = stdin)\n"
    "  --json          print {\"signature\": ...}\n"
    "  --help          print this help\n";

static const char usage_tpm_clear[] =
    "Usage: provhsm tpm clear-identity\n"
    "\n"
    "Evicts the persistent TPM identity key, so the device must activate again.\n"
    "\n"
    "Options:\n"
    "  --help    print this help\n";

static const char usage_identity_remove[] =
    "Usage: provhsm identity remove x509|symmetric\n"
    "\n"
    "Removes the stored identity of one attestation (for the TPM use\n"
    "'provhsm tpm clear-identity').\n"
    "\n"
    "Options:\n"
    "  --help    print this help\n";

static const char usage_store_reseal[] =
    "Usage: provhsm store reseal [--unbound | --pcr-values BANK:PCR=HEX[,...]]\n"
    "\n"
    "Seals the store key of a TPM-sealed store again, to the current values of the PCRs\n"
    "of [store] seal_pcrs. The store must open now. Entries are not rewritten.\n"
    "\n"
    "Before a firmware or boot update that changes those PCRs, run it with --pcr-values\n"
    "and the values the PCRs will have after the update: the store key is then sealed to\n"
    "either set of values, those the PCRs hold now and those given, so the store opens\n"
    "before the update and after it, and a wrong value or a failed or rolled-back update\n"
    "leaves it readable under the values of now (run it again with the right values).\n"
    "Once the device runs the update, run it without options: that seals to the new\n"
    "values alone and drops the old ones (it matters when the update fixed a vulnerable\n"
    "firmware: until then, the old firmware still opens the store). `provhsm info` shows\n"
    "a store waiting for that. The bank must be seal_pcrs' bank, each PCR one of\n"
    "seal_pcrs, each value exactly the bank's digest size in hex (64 digits for sha256).\n"
    "A PCR of seal_pcrs left out keeps its current value (read from the TPM): name the\n"
    "PCRs the update changes, and only those.\n"
    "Or run it with --unbound before the update (sealed to this TPM, to no PCR), then\n"
    "without options after it.\n"
    "\n"
    "Options:\n"
    "  --pcr-values V  seal to these PCR values as well as the current ones,\n"
    "                  e.g. sha256:7=<64 hex digits>\n"
    "  --unbound       seal to no PCR (for the time of an update)\n"
    "  --help          print this help\n";

static const char usage_store_rekey[] =
    "Usage: provhsm store rekey --to tpm|key-file|passphrase\n"
    "\n"
    "Re-encrypts every entry under a new store key held as named: sealed to the TPM of\n"
    "[tpm], in a new key file, or derived from the configured passphrase. The store must\n"
    "open with its current key. New files are written beside the old ones and take over\n"
    "in one atomic switch of the store's header: a crash at any point leaves a store that\n"
    "opens (with the old key before the switch, the new one after it).\n"
    "\n"
    "Options:\n"
    "  --to MODE  tpm, key-file or passphrase\n"
    "  --help     print this help\n";

static const provhsm_cli_cmd commands[] = {
    {NULL, "init", "create the key store", usage_init, provhsm_cli_cmd_init},
    {NULL, "info", "show backends and identities (never a secret)", usage_info,
     provhsm_cli_cmd_info},
    {"x509", "generate", "generate a device key and a self-signed certificate or a CSR",
     usage_x509_generate, provhsm_cli_cmd_x509_generate},
    {"x509", "import", "import a certificate chain, with or without its key", usage_x509_import,
     provhsm_cli_cmd_x509_import},
    {"x509", "adopt", "use a key already in the TPM or on a token, with its certificate",
     usage_x509_adopt, provhsm_cli_cmd_x509_adopt},
    {"symmetric", "set", "store a symmetric-key identity", usage_symmetric_set,
     provhsm_cli_cmd_symmetric_set},
    {"symmetric", "derive", "derive a device key from a group key", usage_symmetric_derive,
     provhsm_cli_cmd_symmetric_derive},
    {NULL, "sas-token", "make a SAS token as the SDK does", usage_sas_token,
     provhsm_cli_cmd_sas_token},
    {"export", "x509-cert", "print the X.509 certificate chain", usage_export_cert,
     provhsm_cli_cmd_export_cert},
    {"tpm", "info", "show the registration id, EK and SRK", usage_tpm_info,
     provhsm_cli_cmd_tpm_info},
    {"tpm", "activate", "import the identity key from an activation blob", usage_tpm_activate,
     provhsm_cli_cmd_tpm_activate},
    {"tpm", "sign", "HMAC data with the identity key", usage_tpm_sign, provhsm_cli_cmd_tpm_sign},
    {"tpm", "clear-identity", "evict the identity key", usage_tpm_clear, provhsm_cli_cmd_tpm_clear},
    {"identity", "remove", "remove a stored identity", usage_identity_remove,
     provhsm_cli_cmd_identity_remove},
    {"store", "reseal", "seal a TPM-sealed store key again (PCR changes)", usage_store_reseal,
     provhsm_cli_cmd_store_reseal},
    {"store", "rekey", "re-encrypt every entry under a new store key", usage_store_rekey,
     provhsm_cli_cmd_store_rekey},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void print_main_usage(FILE *out)
{
    fputs("Usage: provhsm [GLOBAL OPTIONS] COMMAND [OPTIONS]\n"
          "\n"
          "Puts device identities into provhsm's store and shows what the Azure IoT SDK\n"
          "will read from it.\n"
          "\n"
          "Commands:\n",
          out);
    for (size_t i = 0; i < NCOMMANDS; i++) {
        char name[64];
        provhsm_cli_cmd_name(&commands[i], name, sizeof(name));
        fprintf(out, "  %-22s %s\n", name, commands[i].summary);
    }
    fputs("\n"
          "Global options (before the command):\n"
          "  --config FILE   configuration file (instead of $PROVHSM_CONFIG or\n"
          "                  /etc/provhsm/provhsm.conf)\n"
          "  -v, --verbose   log at info level\n"
          "  -q, --quiet     log errors only\n"
          "  --version       print the version\n"
          "  -h, --help      print this help\n"
          "\n"
          "'provhsm COMMAND --help' shows a command's options.\n"
          "Exit status: 0 success, 1 failure, 2 usage error.\n",
          out);
}

static int is_group(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (commands[i].group != NULL && strcmp(commands[i].group, name) == 0)
            return 1;
    return 0;
}

static void print_group_usage(const char *group, FILE *out)
{
    fprintf(out, "Usage: provhsm %s SUBCOMMAND [OPTIONS]\n\nSubcommands:\n", group);
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (commands[i].group != NULL && strcmp(commands[i].group, group) == 0)
            fprintf(out, "  %-16s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n'provhsm %s SUBCOMMAND --help' shows its options.\n", group);
}

static const provhsm_cli_cmd *find_command(const char *group, const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++) {
        const provhsm_cli_cmd *c = &commands[i];
        if ((group == NULL) != (c->group == NULL))
            continue;
        if (group != NULL && strcmp(group, c->group) != 0)
            continue;
        if (strcmp(name, c->name) == 0)
            return c;
    }
    return NULL;
}

static int is_help(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

/* "provhsm help [COMMAND [SUBCOMMAND]]" */
static int run_help(int argc, char **argv)
{
    const provhsm_cli_cmd *c;

    if (argc == 0) {
        print_main_usage(stdout);
        return PROVHSM_CLI_OK;
    }
    if (is_group(argv[0])) {
        if (argc == 1) {
            print_group_usage(argv[0], stdout);
            return PROVHSM_CLI_OK;
        }
        c = find_command(argv[0], argv[1]);
    } else {
        c = find_command(NULL, argv[0]);
    }
    if (c == NULL)
        return provhsm_cli_usage_error(NULL, "no help for unknown command '%s'", argv[0]);
    fputs(c->usage, stdout);
    return PROVHSM_CLI_OK;
}

/* Finds and runs the command at argv[0]. */
static int dispatch(int argc, char **argv)
{
    const provhsm_cli_cmd *c;
    const char *name = argv[0];

    if (strcmp(name, "help") == 0)
        return run_help(argc - 1, argv + 1);
    if (is_group(name)) {
        if (argc < 2)
            return provhsm_cli_usage_error(
                NULL, "'%s' needs a subcommand (see 'provhsm %s --help')", name, name);
        if (is_help(argv[1])) {
            print_group_usage(name, stdout);
            return PROVHSM_CLI_OK;
        }
        c = find_command(name, argv[1]);
        if (c == NULL)
            return provhsm_cli_usage_error(
                NULL, "unknown subcommand '%s %s' (see 'provhsm %s --help')", name, argv[1], name);
        return c->run(c, argc - 2, argv + 2);
    }
    c = find_command(NULL, name);
    if (c == NULL)
        return provhsm_cli_usage_error(NULL, "unknown command '%s'", name);
    return c->run(c, argc - 1, argv + 1);
}

int main(int argc, char **argv)
{
    const char *config = NULL;
    int level = -1;
    int i, rc;

    provhsm_cli_log_install();

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == '\0')
            break;
        if (is_help(a)) {
            print_main_usage(stdout);
            return PROVHSM_CLI_OK;
        } else if (strcmp(a, "--version") == 0) {
            printf("provhsm %s\n", provhsm_version());
            return fflush(stdout) == 0 ? PROVHSM_CLI_OK : PROVHSM_CLI_FAIL;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
            level = PROVHSM_LOG_INFO;
        } else if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0) {
            level = PROVHSM_LOG_ERROR;
        } else if (strcmp(a, "--config") == 0) {
            if (i + 1 >= argc)
                return provhsm_cli_usage_error(NULL, "option --config needs a value");
            config = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            config = a + 9;
        } else {
            return provhsm_cli_usage_error(NULL, "unknown global option '%s'", a);
        }
    }
    if (i >= argc)
        return provhsm_cli_usage_error(NULL, "no command given");
    if (config != NULL && *config == '\0')
        return provhsm_cli_usage_error(NULL, "option --config needs a file name");

    if (level >= 0)
        provhsm_set_log_level((provhsm_log_level)level);
    provhsm_cli_set_verbose(
        level == PROVHSM_LOG_INFO ||
        (level < 0 && getenv("PROVHSM_LOG") != NULL && *getenv("PROVHSM_LOG") != '\0'));
    if (config != NULL) {
        provhsm_err err = provhsm_config_use_file(config);
        if (err != PROVHSM_OK)
            return provhsm_cli_fail(err, "cannot use configuration file %s", config);
    }

    rc = provhsm_cli_become_store_owner();
    if (rc == PROVHSM_CLI_OK)
        rc = dispatch(argc - i, argv + i);
    provhsm_cli_sdk_deinit();
    if (fflush(stdout) != 0 && rc == PROVHSM_CLI_OK)
        rc = provhsm_cli_error("writing to stdout failed");
    return rc;
}
