#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/): small valid
inputs and the edge cases next to them. Certificates and keys come from the openssl
command. Run from anywhere; it replaces the seeds it writes and leaves others alone.
tpm_blob's seeds are made by hand (see fuzz_tpm_blob.c)."""
import os
import struct
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def read(cwd, name):
    with open(os.path.join(cwd, name), "rb") as f:
        return f.read()


# ---- identity records (identity.h): "PHI1", kind, then tag | be32 length | bytes ----
def record(kind, *fields):
    out = b"PHI1" + bytes([kind])
    for tag, value in fields:
        out += bytes([tag]) + struct.pack(">I", len(value)) + value
    return out


def identity_seeds(key_pem, chain_pem):
    key, chain = (1, key_pem), (2, chain_pem)
    regid, symkey = (3, b"device-01"), (4, b"MDEyMzQ1Njc4OWFiY2RlZg==")
    write("identity", "x509", record(1, key, chain))
    write("identity", "x509-pending", record(1, key))
    write("identity", "symmetric", record(2, regid, symkey))
    write("identity", "x509-foreign-symmetric-key", record(1, key, chain, symkey))
    write("identity", "x509-foreign-registration-id", record(1, key, regid))
    write("identity", "symmetric-foreign-key-pem", record(2, regid, symkey, (1, b"K")))
    write("identity", "x509-repeated-key", record(1, key, key))
    write("identity", "x509-truncated", record(1, key, chain)[:-7])
    write("identity", "x509-length-past-end", record(1, (1, b"KEY"))[:-1])
    write("identity", "x509-nul-in-field", record(1, (1, b"K\0Y")))
    write("identity", "unknown-tag", record(1, (1, b"K"), (9, b"?")))
    write("identity", "magic-only", b"PHI1")
    write("identity", "empty", b"")


# ---- store files (src/store.c's opening comment) ----
def store_seeds():
    entry_hdr = b"PHSMENTR" + struct.pack(">HBBI", 1, 1, 0, 5) + bytes(12)
    write("store", "0-entry", b"\x00" + entry_hdr + b"cipher" + bytes(16))
    write("store", "0-entry-bad-version", b"\x00" + b"PHSMENTR" + struct.pack(">HBBI", 2, 1, 0, 0)
          + bytes(28))
    write("store", "0-entry-length-too-big", b"\x00" + b"PHSMENTR"
          + struct.pack(">HBBI", 1, 1, 0, 0xFFFFFFFF) + bytes(28))
    write("store", "0-entry-short", b"\x00PHSMENTR")
    write("store", "1-genuine-unchanged", b"\x01\xff\xff\xff\xff" + b"plaintext")
    write("store", "1-genuine-empty", b"\x01\xff\xff\xff\xff")
    write("store", "1-flip-version", b"\x01\x00\x09\xff\xff" + b"plaintext")
    write("store", "1-flip-length", b"\x01\x00\x0f\xff\xff" + b"plaintext")
    write("store", "1-flip-tag", b"\x01\x00\x30\xff\xff" + b"plaintext")
    write("store", "1-cut-header", b"\x01\xff\xff\x00\x10" + b"plaintext")
    meta = b"PHSMMETA" + struct.pack(">HB", 1, 1) + bytes(53)
    write("store", "2-meta-key-file", b"\x02" + meta)
    write("store", "2-meta-passphrase", b"\x02" + b"PHSMMETA" + struct.pack(">HBBII", 1, 2, 15, 8, 1)
          + bytes(32) + bytes(12))
    write("store", "2-meta-huge-scrypt", b"\x02" + b"PHSMMETA" + struct.pack(">HBBII", 1, 2, 40, 0xFFFFFFFF, 1)
          + bytes(44))
    write("store", "3-key-file", b"\x03" + b"PHSMSKEY" + struct.pack(">HH", 1, 0) + bytes(32))
    write("store", "3-key-file-short", b"\x03" + b"PHSMSKEY" + struct.pack(">HH", 1, 0))
    write("store", "4-check", b"\x04" + b"PHSMENTR" + struct.pack(">HBBI", 1, 1, 0, 26) + bytes(12)
          + b"provhsm store key check v1" + bytes(16))


# ---- configuration text, then NUL-separated PROVHSM_STORE, PROVHSM_LOG, PROVHSM_TCTI ----
CONFIG_FULL = """# a complete file
[store]
path = /var/lib/provhsm          # a comment after a value
key_file = ""
passphrase_file = "/run/my secrets/provhsm"
passphrase_env = PROVHSM_PASSPHRASE
scrypt_log2_n = 15
scrypt_r = 8
scrypt_p = 1

[x509]
backend = software

[symmetric]
backend = software

[tpm]
backend = tpm
tcti = device:/dev/tpmrm0
ek_handle = 0x81010001
srk_handle = 0x81000001
identity_handle = 0x81000100
owner_auth_file = ""
owner_auth_env = TPM_OWNER_AUTH
endorsement_auth_file = /etc/provhsm/endorsement.auth
endorsement_auth_env = ""

[log]
level = debug
"""


def config_seeds():
    write("config", "full", CONFIG_FULL)
    write("config", "empty", "")
    write("config", "env-only", "\0/tmp/store\0info\0swtpm:host=127.0.0.1,port=2321")
    write("config", "env-relative-store", "[log]\nlevel=warn\n\0relative/store\0\0mssim")
    write("config", "env-empty-values", "\0\0\0")
    write("config", "unknown-key", "[store]\nnope = 1\n")
    write("config", "unknown-section", "[nope]\n")
    write("config", "no-section", "path = /x\n")
    write("config", "unterminated-quote", "[store]\npath = \"/x\n")
    write("config", "bad-number", "[store]\nscrypt_r = 99999999999999999999\n")
    write("config", "hex-handle", "[tpm]\nek_handle = 0xffffffffff\n")
    write("config", "long-path", "[store]\npath = /" + "a" * 5000 + "\n")
    write("config", "crlf", "[store]\r\npath = /x\r\n")
    write("config", "duplicate-key", "[store]\npath = /a\npath = /b\n")


def encoding_seeds():
    for name, text in [("b64-16", "MDEyMzQ1Njc4OWFiY2RlZg=="), ("b64-pad1", "QUI="),
                       ("b64-pad2", "QQ=="), ("b64-noncanonical", "QR=="),
                       ("b64-pad-inside", "QQ==QQ=="), ("b64-bad-char", "QQ-_"),
                       ("b64-short", "QQ="), ("regid", "device-01.a_b:c"),
                       ("url", "0ne00ABC123/registrations/d\u00e9vice~1 x"),
                       ("latin1", b"\x80\xbf\xc0\xff".decode("latin-1")), ("empty", "")]:
        write("encoding", name, text.encode("latin-1"))


# ---- certificates and keys ----
def x509_seeds(tmp):
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=tmp)
    openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=Fuzz Root", "-days", "3650",
            "-out", "ca.pem", cwd=tmp)
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
            "leaf.key", cwd=tmp)
    openssl("req", "-new", "-key", "leaf.key", "-subj", "/CN=device-01/O=Fuzz", "-out",
            "leaf.csr", cwd=tmp)
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "365", "-out", "leaf.pem", cwd=tmp)
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out",
            "rsa.key", cwd=tmp)
    openssl("req", "-x509", "-new", "-key", "rsa.key", "-subj", "/CN=rsa-device", "-days", "30",
            "-out", "rsa.pem", cwd=tmp)
    openssl("x509", "-in", "leaf.pem", "-outform", "DER", "-out", "leaf.der", cwd=tmp)
    openssl("x509", "-in", "rsa.pem", "-outform", "DER", "-out", "rsa.der", cwd=tmp)
    openssl("pkcs8", "-topk8", "-nocrypt", "-in", "leaf.key", "-outform", "DER", "-out",
            "leaf.p8", cwd=tmp)
    openssl("pkcs8", "-topk8", "-nocrypt", "-in", "rsa.key", "-outform", "DER", "-out",
            "rsa.p8", cwd=tmp)
    openssl("ec", "-in", "leaf.key", "-out", "leaf-traditional.key", cwd=tmp)

    leaf, ca, rsa = read(tmp, "leaf.pem"), read(tmp, "ca.pem"), read(tmp, "rsa.pem")
    leaf_key = read(tmp, "leaf.key")
    write("x509", "0-chain-in-order", b"\x00" + leaf + ca)
    write("x509", "0-chain-out-of-order", b"\x00" + ca + leaf)
    write("x509", "0-chain-unrelated", b"\x00" + leaf + rsa)
    write("x509", "0-cert-and-key", b"\x00" + leaf + leaf_key)
    write("x509", "0-key-then-cert", b"\x00" + leaf_key + leaf)
    write("x509", "0-traditional-key", b"\x00" + read(tmp, "leaf-traditional.key"))
    write("x509", "0-rsa-cert-and-key", b"\x00" + rsa + read(tmp, "rsa.key"))
    write("x509", "0-csr", b"\x00" + read(tmp, "leaf.csr"))
    write("x509", "0-trailing-text", b"\x00" + leaf + b"garbage\n")
    write("x509", "0-truncated", b"\x00" + leaf[: len(leaf) // 2])
    write("x509", "1-der-leaf", b"\x01" + read(tmp, "leaf.der"))
    write("x509", "1-der-rsa", b"\x01" + read(tmp, "rsa.der"))
    write("x509", "2-der-ec-key", b"\x02" + read(tmp, "leaf.p8"))
    write("x509", "2-der-rsa-key", b"\x02" + read(tmp, "rsa.p8"))
    write("x509", "3-cn", b"\x03device-01")
    write("x509", "3-cn-utf8", "\x03d\u00e9vice \u2603".encode())
    write("x509", "3-cn-64", b"\x03" + b"c" * 64)
    write("x509", "3-cn-bad-utf8", b"\x03\xc3\x28")
    return leaf_key, leaf + ca


def main():
    with tempfile.TemporaryDirectory() as tmp:
        key_pem, chain_pem = x509_seeds(tmp)
    identity_seeds(key_pem, chain_pem)
    store_seeds()
    config_seeds()
    encoding_seeds()


if __name__ == "__main__":
    main()
