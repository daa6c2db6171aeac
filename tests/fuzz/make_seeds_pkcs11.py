#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_pkcs11 (tests/fuzz/corpus/pkcs11/): what a token gives
the PKCS#11 backend, made with the openssl command: CKA_EC_PARAMS and CKA_EC_POINT of
P-256 and P-384 keys, certificates' DER, and a root -> intermediate -> leaf chain. The
input layout is described in fuzz_pkcs11.c. Replaces the seeds it writes."""
import os
import struct
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
EC, CERT_KEY, CHAIN = 0, 1, 2


def write(name, mode, *fields):
    d = os.path.join(HERE, "corpus", "pkcs11")
    os.makedirs(d, exist_ok=True)
    data = bytes([mode]) + b"".join(struct.pack(">H", len(f)) + f for f in fields)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def openssl(cwd, *args):
    return subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True).stdout


def tlv(der, off):
    """(tag, start of value, end of value) of the DER element at off (short/long lengths)."""
    tag, n = der[off], der[off + 1]
    off += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(der[off:off + k], "big")
        off += k
    return tag, off, off + n


def ec_attrs(spki):
    """CKA_EC_PARAMS (the curve OID's DER) and the bare point of an EC SubjectPublicKeyInfo."""
    _, seq, _ = tlv(spki, 0)
    _, alg, alg_end = tlv(spki, seq)
    _, _, oid1_end = tlv(spki, alg)
    params = spki[oid1_end:alg_end]
    _, bits, bits_end = tlv(spki, alg_end)
    return params, spki[bits + 1:bits_end]


def octet_string(b):
    return bytes([0x04, len(b)]) + b if len(b) < 128 else bytes([0x04, 0x81, len(b)]) + b


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for curve, name in (("prime256v1", "p256"), ("secp384r1", "p384")):
            openssl(tmp, "ecparam", "-name", curve, "-genkey", "-noout", "-out", name + ".key")
            spki = openssl(tmp, "pkey", "-in", name + ".key", "-pubout", "-outform", "DER")
            params, point = ec_attrs(spki)
            write("ec-" + name, EC, params, octet_string(point))
            write("ec-" + name + "-bare-point", EC, params, point)
            # an empty CKA_EC_POINT as the input's last field: a read past it is a finding
            write("ec-" + name + "-empty-point", EC, params, b"")
        write("ec-p384-compressed", EC, params, b"\x02" + point[1:49])  # the x of the last key
        openssl(tmp, "ecparam", "-name", "secp521r1", "-genkey", "-noout", "-out", "p521.key")
        spki = openssl(tmp, "pkey", "-in", "p521.key", "-pubout", "-outform", "DER")
        params, point = ec_attrs(spki)
        write("ec-p521-refused", EC, params, octet_string(point))

        conf = ("[ca]\nbasicConstraints=critical,CA:true\nkeyUsage=keyCertSign\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        with open(os.path.join(tmp, "ext.cnf"), "w") as f:
            f.write(conf)
        openssl(tmp, "req", "-x509", "-new", "-key", "p384.key", "-subj", "/CN=Token Root",
                "-days", "3650", "-outform", "DER", "-out", "root.der")
        openssl(tmp, "req", "-new", "-key", "p256.key", "-subj", "/CN=Token Intermediate",
                "-out", "int.csr")
        openssl(tmp, "x509", "-req", "-in", "int.csr", "-CA", "root.der", "-CAform", "DER",
                "-CAkey", "p384.key", "-set_serial", "2", "-days", "3650", "-extfile",
                "ext.cnf", "-extensions", "ca", "-outform", "DER", "-out", "int.der")
        openssl(tmp, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "leaf.key")
        openssl(tmp, "req", "-new", "-key", "leaf.key", "-subj", "/CN=device-01", "-out",
                "leaf.csr")
        openssl(tmp, "x509", "-req", "-in", "leaf.csr", "-CA", "int.der", "-CAform", "DER",
                "-CAkey", "p256.key", "-set_serial", "3", "-days", "365", "-outform", "DER",
                "-out", "leaf.der")
        openssl(tmp, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024",
                "-out", "rsa.key")
        openssl(tmp, "req", "-x509", "-new", "-key", "rsa.key", "-subj", "/CN=rsa", "-days",
                "30", "-outform", "DER", "-out", "rsa.der")
        der = {n: open(os.path.join(tmp, n + ".der"), "rb").read()
               for n in ("root", "int", "leaf", "rsa")}

    write("cert-key-leaf", CERT_KEY, der["leaf"])
    write("cert-key-root-p384", CERT_KEY, der["root"])
    write("cert-key-rsa-refused", CERT_KEY, der["rsa"])
    key_id = bytes.fromhex("a1b2c3d4")
    # objects: one byte (odd: carries the key's CKA_ID) then the DER; selector 0 = object 0
    write("chain-full", CHAIN, key_id, b"\x00", b"\x01" + der["leaf"], b"\x00" + der["int"],
          b"\x00" + der["root"])
    write("chain-shuffled", CHAIN, key_id, b"\x02", b"\x00" + der["root"], b"\x00" + der["int"],
          b"\x00" + der["leaf"], b"\x00" + der["rsa"])
    write("chain-no-root", CHAIN, key_id, b"\x01", b"\x00" + der["int"], b"\x01" + der["leaf"])
    write("chain-id-on-other-cert", CHAIN, key_id, b"\x00", b"\x00" + der["leaf"],
          b"\x01" + der["rsa"])
    write("chain-garbage-object", CHAIN, key_id, b"\x00", b"\x01" + der["leaf"],
          b"\x00" + der["int"][:-5], b"\x00" + der["root"])


if __name__ == "__main__":
    main()
