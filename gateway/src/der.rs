//! Just enough DER (X.690) to read two things without an X.509 library:
//! the subject Common Name of a client certificate (RFC 5280 §4.1.2.6) and
//! the RSAPublicKey inside a SubjectPublicKeyInfo (RFC 5280 §4.1.2.7,
//! RFC 8017 §A.1.1). Every read is bounds-checked; bad input gives `None`.

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const BIT_STRING: u8 = 0x03;
/// id-at-commonName, 2.5.4.3.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

/// One TLV: (tag, content, rest of input). Only single-byte tags.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The content of a TLV that must have `tag`.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = tlv(input)?;
    (t == tag).then_some((content, rest))
}

/// The subject Common Name of a DER certificate, if it has one.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    let (certificate, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(certificate, SEQUENCE)?;
    let mut rest = tbs;
    // Optional [0] EXPLICIT version.
    if let Some((0xA0, _, after)) = tlv(rest) {
        rest = after;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (subject, _) = expect(rest, SEQUENCE)?;
    let mut rdns = subject;
    let mut found = None;
    while !rdns.is_empty() {
        let (set, after) = expect(rdns, SET)?;
        rdns = after;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (attr, after) = expect(attrs, SEQUENCE)?;
            attrs = after;
            let (oid, value) = expect(attr, OID)?;
            if oid == OID_CN {
                let (tag, text, _) = tlv(value)?;
                // The last CN wins, as in most X.509 tooling.
                found = decode_string(tag, text);
            }
        }
    }
    found
}

fn decode_string(tag: u8, bytes: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, TeletexString, IA5String.
        0x0C | 0x13 | 0x14 | 0x16 => String::from_utf8(bytes.to_vec()).ok(),
        // BMPString: UTF-16BE.
        0x1E if bytes.len().is_multiple_of(2) => {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// The RSAPublicKey (PKCS#1) inside a DER SubjectPublicKeyInfo.
pub fn spki_public_key(spki: &[u8]) -> Option<&[u8]> {
    let (body, _) = expect(spki, SEQUENCE)?;
    let (_algorithm, rest) = expect(body, SEQUENCE)?;
    let (bits, _) = expect(rest, BIT_STRING)?;
    let (&unused, key) = bits.split_first()?;
    (unused == 0).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            out.push(0x82);
            out.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(content);
        out
    }

    fn cert_with_subject(subject: &[u8]) -> Vec<u8> {
        let mut tbs = wrap(0xA0, &wrap(0x02, &[2]));
        tbs.extend(wrap(0x02, &[1]));
        tbs.extend(wrap(SEQUENCE, &[]));
        tbs.extend(wrap(SEQUENCE, &[]));
        tbs.extend(wrap(SEQUENCE, &[]));
        tbs.extend(wrap(SEQUENCE, subject));
        tbs.extend(wrap(SEQUENCE, &[]));
        let mut cert = wrap(SEQUENCE, &tbs);
        cert.extend(wrap(SEQUENCE, &[]));
        wrap(SEQUENCE, &cert)
    }

    fn rdn(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let mut attr = wrap(OID, oid);
        attr.extend(wrap(tag, value));
        wrap(SET, &wrap(SEQUENCE, &attr))
    }

    #[test]
    fn finds_the_common_name() {
        let mut subject = rdn(&[0x55, 0x04, 0x06], 0x13, b"DE");
        subject.extend(rdn(OID_CN, 0x0C, "device-7ü".as_bytes()));
        let cert = cert_with_subject(&subject);
        assert_eq!(subject_common_name(&cert).as_deref(), Some("device-7ü"));
        let no_cn = cert_with_subject(&rdn(&[0x55, 0x04, 0x0A], 0x0C, b"org"));
        assert_eq!(subject_common_name(&no_cn), None);
    }

    #[test]
    fn truncated_input_is_none() {
        let cert = cert_with_subject(&rdn(OID_CN, 0x0C, b"x"));
        for n in 0..cert.len() {
            assert_eq!(subject_common_name(&cert[..n]), None, "{n}");
        }
        assert_eq!(spki_public_key(&[0x30, 0x05, 0x30]), None);
    }
}
