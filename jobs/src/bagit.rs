//! The `bagit` profile: one BagIt bag (RFC 8493) per deposit, judged from
//! the zip's central directory and its tag files before any payload byte is
//! written, and its digests compared after the single unpack pass. The
//! release is the bag itself, so whatever is refused here would have made
//! a release that is not a bag.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use unicode_normalization::UnicodeNormalization;

use crate::archive::Entry;
use crate::error::{Code, Error, Result, Stage};
use crate::md5sums::{self, Algo};
use crate::names;
use crate::unpack::FileRecord;

/// Tag files read into memory (charged to `limits.max_metadata_bytes`):
/// the ones a validator must parse. Other tag files are streamed like
/// payload.
pub fn is_parsed_tag(path: &str) -> bool {
    !path.contains('/') && (path == "bagit.txt" || path == "bag-info.txt" || manifest_kind(path).is_some())
}

/// `manifest-<alg>.txt` (payload, false) or `tagmanifest-<alg>.txt` (tag,
/// true), with the algorithm's name as written.
fn manifest_kind(path: &str) -> Option<(bool, &str)> {
    let stem = path.strip_suffix(".txt")?;
    if let Some(alg) = stem.strip_prefix("tagmanifest-") {
        return Some((true, alg));
    }
    stem.strip_prefix("manifest-").map(|alg| (false, alg))
}

fn algo_named(name: &str) -> Option<Algo> {
    match name {
        "md5" => Some(Algo::Md5),
        "sha1" => Some(Algo::Sha1),
        "sha224" => Some(Algo::Sha224),
        "sha256" => Some(Algo::Sha256),
        "sha512" => Some(Algo::Sha512),
        _ => None,
    }
}

fn invalid(entry: &str, message: impl Into<String>) -> Error {
    Error::reject(Code::BagInvalid, Stage::Verify, Some(entry), message)
}

/// Where the bag is in the zip: `""` when `bagit.txt` is at the top, or
/// `"<folder>/"` when every entry is in one top-level folder holding it
/// (what `zip -r bag.zip mybag/` makes).
pub fn locate(entries: &[Entry]) -> Result<String> {
    if entries.iter().any(|e| !e.is_dir && e.name == "bagit.txt") {
        return Ok(String::new());
    }
    let tops: BTreeSet<&str> = entries.iter().map(|e| e.name.split('/').next().unwrap_or(&e.name)).collect();
    let no_bag = |why: String| {
        Error::reject(
            Code::BagInvalid,
            Stage::Verify,
            Some("bagit.txt"),
            format!(
                "{why}: a BagIt deposit holds one bag, with bagit.txt at the top of the zip or in its single top-level folder (make it with `zip -r bag.zip mybag/`)"
            ),
        )
    };
    match tops.len() {
        1 => {
            let top = tops.iter().next().copied().unwrap_or_default();
            let in_folder =
                entries.iter().all(|e| e.name.starts_with(&format!("{top}/")) || (e.is_dir && e.name == top));
            if in_folder && entries.iter().any(|e| !e.is_dir && e.name == format!("{top}/bagit.txt")) {
                Ok(format!("{top}/"))
            } else {
                Err(no_bag(format!("no bagit.txt at the top of the zip nor in {top}/")))
            }
        }
        0 => Err(no_bag("the zip is empty".into())),
        n => {
            let shown: Vec<&str> = tops.iter().take(5).copied().collect();
            Err(no_bag(format!(
                "no bagit.txt at the top of the zip, and {n} entries there ({}{})",
                shown.join(", "),
                if n > 5 { ", ..." } else { "" }
            )))
        }
    }
}

/// The refusal of `fetch.txt`, before anything is read.
pub fn refuse_fetch(files: &BTreeMap<String, u64>) -> Result<()> {
    if files.contains_key("fetch.txt") {
        return Err(invalid(
            "fetch.txt",
            "fetch.txt: the bag lists files to download (fetch.txt, RFC 8493 §2.2.3); depot never downloads: put every file in the bag under data/ and remove fetch.txt",
        ));
    }
    Ok(())
}

/// One line of a manifest, its path resolved to a file of the bag.
#[derive(Debug, Clone)]
pub struct BagLine {
    pub number: usize,
    pub sum: Vec<u8>,
    /// Relative to the bag's root, as found in the zip.
    pub path: String,
}

#[derive(Debug, Clone)]
pub struct BagManifest {
    /// Relative to the bag's root (`manifest-sha256.txt`).
    pub name: String,
    pub tag: bool,
    pub algo: Algo,
    pub lines: Vec<BagLine>,
}

/// A bag as judged before unpacking: what the unpack pass must measure and
/// what it must then match.
#[derive(Debug, Clone)]
pub struct Bag {
    /// `""` or `"<folder>/"`: prepended to a bag path to name the zip entry.
    pub root: String,
    pub version: String,
    pub manifests: Vec<BagManifest>,
    /// What the RFC says SHOULD be otherwise, for the report.
    pub warnings: Vec<String>,
}

impl Bag {
    /// (zip entry name, algorithm) of every digest a manifest gives, MD5
    /// aside (every file gets one).
    pub fn wants(&self) -> impl Iterator<Item = (String, Algo)> + '_ {
        self.manifests
            .iter()
            .filter(|m| m.algo != Algo::Md5)
            .flat_map(move |m| m.lines.iter().map(move |l| (format!("{}{}", self.root, l.path), m.algo)))
    }
}

/// Tag files in their declared encoding. ISO-8859-1 is decoded as itself
/// (encoding_rs, following WHATWG, reads that label as windows-1252); a
/// byte-order mark, where there is one, tells UTF-16's byte order.
fn decode(bytes: &[u8], encoding: &str, name: &str) -> Result<String> {
    let label = encoding.trim().to_ascii_lowercase();
    if matches!(label.as_str(), "iso-8859-1" | "iso8859-1" | "iso_8859-1" | "latin1" | "latin-1" | "l1") {
        return Ok(bytes.iter().map(|&b| char::from(b)).collect());
    }
    let Some(declared) = encoding_rs::Encoding::for_label(label.as_bytes()) else {
        return Err(invalid(
            "bagit.txt",
            format!(
                "bagit.txt: Tag-File-Character-Encoding {encoding:?} is not an encoding depot knows; use UTF-8 (RFC 8493 §2.1.1)"
            ),
        ));
    };
    let (enc, body) = match encoding_rs::Encoding::for_bom(bytes) {
        Some((bom, len))
            if bom == declared || (bom.name().starts_with("UTF-16") && declared.name().starts_with("UTF-16")) =>
        {
            (bom, &bytes[len..])
        }
        Some((bom, _)) => {
            return Err(invalid(
                name,
                format!("{name}: starts with a {} byte-order mark, but bagit.txt declares {encoding}", bom.name()),
            ));
        }
        None => (declared, bytes),
    };
    enc.decode_without_bom_handling_and_without_replacement(body).map(|t| t.into_owned()).ok_or_else(|| {
        invalid(
            name,
            format!("{name}: is not {encoding} text, the encoding bagit.txt declares (Tag-File-Character-Encoding)"),
        )
    })
}

/// Lines as the RFC ends them: CR, LF or CRLF; final empty lines dropped.
fn lines(text: &str) -> Vec<String> {
    let text = text.replace("\r\n", "\n");
    let mut out: Vec<String> = text.split(['\n', '\r']).map(str::to_owned).collect();
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    out
}

/// `bagit.txt`: exactly `BagIt-Version: M.N` then
/// `Tag-File-Character-Encoding: ENC` (RFC 8493 §2.1.1), UTF-8, no BOM.
/// Returns (version, encoding).
fn parse_bagit_txt(bytes: &[u8], warnings: &mut Vec<String>) -> Result<(String, String)> {
    let bad = |why: &str| invalid("bagit.txt", format!("bagit.txt: {why} (RFC 8493 §2.1.1)"));
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) || bytes.starts_with(&[0xFE, 0xFF]) || bytes.starts_with(&[0xFF, 0xFE]) {
        return Err(bad(
            "starts with a byte-order mark (BOM), which a bag's bagit.txt must not have; save it as UTF-8 without BOM",
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| bad("is not UTF-8 text"))?;
    let ls = lines(text);
    let version = ls
        .first()
        .and_then(|l| l.strip_prefix("BagIt-Version: "))
        .map(str::to_owned)
        .ok_or_else(|| bad("its first line must be `BagIt-Version: <M.N>`"))?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (major, minor) = version.split_once('.').unwrap_or(("", ""));
    if !numeric(major) || !numeric(minor) {
        return Err(bad(&format!("BagIt-Version {version:?} is not a version number such as 1.0")));
    }
    let known = ["0.93", "0.94", "0.95", "0.96", "0.97", "1.0"];
    if !known.contains(&version.as_str()) {
        return Err(bad(&format!("BagIt-Version {version} is not one depot can check (0.93 to 1.0)")));
    }
    let encoding = ls
        .get(1)
        .and_then(|l| l.strip_prefix("Tag-File-Character-Encoding: "))
        .map(str::to_owned)
        .ok_or_else(|| bad("its second line must be `Tag-File-Character-Encoding: <encoding>`, such as UTF-8"))?;
    if encoding.is_empty() || encoding.trim() != encoding {
        return Err(bad(&format!("Tag-File-Character-Encoding {encoding:?} has spaces around it or is empty")));
    }
    if ls.len() > 2 {
        return Err(bad("it must hold exactly two lines, BagIt-Version and Tag-File-Character-Encoding"));
    }
    if version != "1.0" && version != "0.97" {
        warnings.push(format!(
            "bagit.txt: BagIt-Version {version} is older than RFC 8493 (BagIt 1.0); new bags are better made as 1.0"
        ));
    }
    Ok((version, encoding))
}

/// RFC 8493 §2.1.3: only `%0A`, `%0D` and `%25` are decoded, once; any
/// other `%` is itself.
fn percent_decode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3).map(str::to_ascii_uppercase);
        match code.as_deref() {
            Some("0A") => out.push('\n'),
            Some("0D") => out.push('\r'),
            Some("25") => out.push('%'),
            _ => {
                out.push('%');
                rest = &rest[i + 1..];
                continue;
            }
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    out
}

/// Payload-Oxum from bag-info.txt: `octets.count`.
fn payload_oxum(text: &str) -> Result<Option<(u64, u64)>> {
    let mut found = None;
    for (i, line) in lines(text).into_iter().enumerate() {
        if line.is_empty() || line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((label, value)) = line.split_once(':') else {
            return Err(invalid(
                "bag-info.txt",
                format!(
                    "bag-info.txt line {}: {:?} is not `Label: value` (RFC 8493 §2.2.2)",
                    i + 1,
                    names::printable(&line)
                ),
            ));
        };
        if label.trim().eq_ignore_ascii_case("Payload-Oxum") && found.is_none() {
            let v = value.trim();
            let parsed = v.split_once('.').and_then(|(o, c)| Some((o.parse::<u64>().ok()?, c.parse::<u64>().ok()?)));
            let Some(oc) = parsed else {
                return Err(invalid(
                    "bag-info.txt",
                    format!("bag-info.txt line {}: Payload-Oxum {v:?} is not `<octets>.<file count>`", i + 1),
                ));
            };
            found = Some(oc);
        }
    }
    Ok(found)
}

/// Everything the bag's structure must be, from its file list and parsed
/// tag files: `files` maps each file's path in the bag to its size,
/// `dirs` the folder entries, `tags` the tag files [`is_parsed_tag`]
/// names, read.
pub fn parse(
    root: &str,
    files: &BTreeMap<String, u64>,
    dirs: &BTreeSet<String>,
    tags: &BTreeMap<String, Vec<u8>>,
) -> Result<Bag> {
    let mut warnings = Vec::new();
    let bagit = tags.get("bagit.txt").ok_or_else(|| invalid("bagit.txt", "bagit.txt is missing"))?;
    let (version, encoding) = parse_bagit_txt(bagit, &mut warnings)?;
    let has_data = dirs.contains("data") || files.keys().any(|p| p.starts_with("data/"));
    if !has_data {
        return Err(invalid("data/", "the bag has no data/ folder: its payload goes under data/ (RFC 8493 §2.1.2)"));
    }
    let payload: BTreeMap<&str, u64> =
        files.iter().filter(|(p, _)| p.starts_with("data/")).map(|(p, s)| (p.as_str(), *s)).collect();
    // A name as listed may differ from the zip's in Unicode form only
    // (a bag made on macOS): found through NFC, with a warning.
    let nfc: HashMap<String, &str> = files.keys().map(|p| (p.nfc().collect::<String>(), p.as_str())).collect();
    let mut manifests = Vec::new();
    let mut unknown = Vec::new();
    for (name, bytes) in tags {
        let Some((tag, alg)) = manifest_kind(name) else { continue };
        let Some(algo) = algo_named(alg) else {
            unknown.push((name.clone(), tag));
            continue;
        };
        let text = decode(bytes, &encoding, name)?;
        let m = parse_manifest(name, tag, algo, &text, &version, files, &nfc, &mut warnings)?;
        manifests.push(m);
    }
    if !manifests.iter().any(|m| !m.tag) {
        let why = if unknown.iter().any(|(_, tag)| !tag) {
            "the bag's payload manifests all use an algorithm depot cannot compute (md5, sha1, sha224, sha256 and sha512 it can)"
        } else {
            "the bag has no payload manifest (manifest-<algorithm>.txt, such as manifest-sha256.txt; RFC 8493 §2.1.3)"
        };
        return Err(invalid("manifest-sha256.txt", why));
    }
    for (name, _) in unknown {
        warnings.push(format!("{name}: an algorithm depot cannot compute; this manifest was not checked"));
    }
    // Every payload manifest lists every payload file, and only those.
    for m in manifests.iter().filter(|m| !m.tag) {
        let listed: BTreeSet<&str> = m.lines.iter().map(|l| l.path.as_str()).collect();
        if let Some(p) = payload.keys().find(|p| !listed.contains(*p)) {
            return Err(invalid(
                p,
                format!(
                    "{p} is in the bag's payload but not listed in {}: every payload manifest must list every file under data/ (RFC 8493 §3)",
                    m.name
                ),
            ));
        }
    }
    if manifests.iter().filter(|m| !m.tag).all(|m| matches!(m.algo, Algo::Md5 | Algo::Sha1)) {
        warnings.push(
            "the payload manifests use only MD5 or SHA-1; RFC 8493 recommends SHA-256 or SHA-512 (bagit.py --sha512)"
                .into(),
        );
    }
    let octets: u64 = payload.values().sum();
    let count = payload.len() as u64;
    match tags.get("bag-info.txt") {
        None => warnings.push("the bag has no bag-info.txt, so no Payload-Oxum to check its size against".into()),
        Some(bytes) => match payload_oxum(&decode(bytes, &encoding, "bag-info.txt")?)? {
            None => warnings.push("bag-info.txt has no Payload-Oxum (RFC 8493 §2.2.2 recommends one)".into()),
            Some((o, c)) if (o, c) != (octets, count) => {
                return Err(invalid(
                    "bag-info.txt",
                    format!(
                        "bag-info.txt: Payload-Oxum is {o}.{c}, but the payload is {octets} bytes in {count} files: the bag is incomplete or bag-info.txt is out of date"
                    ),
                ));
            }
            Some(_) => {}
        },
    }
    Ok(Bag { root: root.to_owned(), version, manifests, warnings })
}

#[allow(clippy::too_many_arguments)]
fn parse_manifest(
    name: &str,
    tag: bool,
    algo: Algo,
    text: &str,
    version: &str,
    files: &BTreeMap<String, u64>,
    nfc: &HashMap<String, &str>,
    warnings: &mut Vec<String>,
) -> Result<BagManifest> {
    let mut out: Vec<BagLine> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let (mut star, mut dot) = (false, false);
    for (i, line) in lines(text).into_iter().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = |why: String| invalid(name, format!("{name} line {number}: {why}"));
        let (hex, rest) = line.split_once([' ', '\t']).ok_or_else(|| at("not `<checksum> <path>`".into()))?;
        let sum = md5sums::parse_sum(hex, algo)
            .ok_or_else(|| at(format!("{hex:?} is not a {} ({} hex digits)", algo.label(), algo.bytes() * 2)))?;
        let mut raw = rest.trim_start_matches([' ', '\t']);
        if let Some(r) = raw.strip_prefix('*') {
            // md5sum's "binary" marker: not part of the name.
            star = true;
            raw = r;
        }
        let mut path = percent_decode(raw);
        if let Some(p) = path.strip_prefix("./") {
            dot = true;
            path = p.to_owned();
        }
        let checked = names::check_name(&path, u64::MAX).map_err(|e| {
            at(format!(
                "{:?}: {}; a manifest path must be relative to the bag and stay inside it (RFC 8493 §2.1.3)",
                names::printable(&path),
                e.why
            ))
        })?;
        if !tag && !checked.starts_with("data/") {
            return Err(at(format!(
                "{:?} is not under data/: a payload manifest lists only the bag's payload files",
                names::printable(checked)
            )));
        }
        let found = if files.contains_key(checked) {
            checked.to_owned()
        } else if let Some(f) = nfc.get(&checked.nfc().collect::<String>()) {
            warnings.push(format!(
                "{name} line {number} lists {checked} in another Unicode normalization form than the file's name in the zip; taken as that file"
            ));
            (*f).to_owned()
        } else {
            return Err(at(format!("lists {checked}, which is not a file in the bag")));
        };
        if let Some(&j) = seen.get(&found) {
            let same = out[j].sum == sum.bytes;
            if version == "1.0" || !same {
                return Err(at(format!(
                    "{found} is listed a second time (first on line {}){}: a manifest lists each file once",
                    out[j].number,
                    if same { "" } else { " with another checksum" }
                )));
            }
            warnings.push(format!("{name} line {number}: {found} is listed a second time, with the same checksum"));
            continue;
        }
        seen.insert(found.clone(), out.len());
        out.push(BagLine { number, sum: sum.bytes, path: found });
    }
    if star {
        warnings.push(format!("{name}: lines use md5sum's `*` binary marker, which is not BagIt's format"));
    }
    if dot {
        warnings.push(format!("{name}: paths start with `./`, which is not BagIt's format"));
    }
    Ok(BagManifest { name: name.to_owned(), tag, algo, lines: out })
}

/// After the unpack pass: every manifest line against what was measured.
pub fn verify(bag: &Bag, files: &[FileRecord]) -> Result<()> {
    let by_name: HashMap<&str, &FileRecord> =
        files.iter().filter(|f| f.level == 0).map(|f| (f.name.as_str(), f)).collect();
    let ordered = bag.manifests.iter().filter(|m| !m.tag).chain(bag.manifests.iter().filter(|m| m.tag));
    for m in ordered {
        for l in &m.lines {
            let entry = format!("{}{}", bag.root, l.path);
            let rec = by_name.get(entry.as_str());
            let entry = &l.path;
            let actual = rec.and_then(|r| match m.algo {
                Algo::Md5 => r.md5.as_ref().map(|d| &d[..]),
                a => r.extra.get(a),
            });
            if actual != Some(&l.sum[..]) {
                return Err(invalid(
                    entry,
                    format!(
                        "{}: {} is {}, {} line {} says {}: the file changed after the bag was made, or was damaged on its way",
                        l.path,
                        m.algo.label(),
                        actual.map_or_else(|| "unknown".into(), md5sums::hex_of),
                        m.name,
                        l.number,
                        md5sums::hex_of(&l.sum)
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_three_escapes_are_decoded() {
        assert_eq!(percent_decode("data/a%0Ab%0dc%25d"), "data/a\nb\rc%d");
        assert_eq!(percent_decode("data/%7Etest1.txt"), "data/%7Etest1.txt");
        assert_eq!(percent_decode("data/%test2.txt%"), "data/%test2.txt%");
        // Decoded once: %252E stays %2E, never `.`.
        assert_eq!(percent_decode("data/%252E%252E/x"), "data/%2E%2E/x");
    }

    #[test]
    fn bagit_txt_is_strict() {
        let mut w = Vec::new();
        assert!(parse_bagit_txt(b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n", &mut w).is_ok());
        assert!(parse_bagit_txt(b"BagIt-Version: 0.96\r\nTag-File-Character-Encoding: UTF-8", &mut w).is_ok());
        assert_eq!(w.len(), 1);
        for bad in [
            &b"\xEF\xBB\xBFBagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"[..],
            b"BagIt-Version : 1.0\nTag-File-Character-Encoding : UTF-8\n",
            b"BagIt-Version: 1.0 \nTag-File-Character-Encoding: UTF-8\n",
            b"BagIt-Version: .97\nTag-File-Character-Encoding: UTF-8\n",
            b"BagIt-Version: 0.97\n",
        ] {
            assert!(parse_bagit_txt(bad, &mut w).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn tag_files_in_their_encoding() {
        assert_eq!(decode(b"caf\xe9", "ISO-8859-1", "x").unwrap(), "café");
        assert_eq!(decode(b"\xfe\xff\x00a\x00b", "UTF-16", "x").unwrap(), "ab");
        assert_eq!(decode(b"\xff\xfea\x00b\x00", "UTF-16", "x").unwrap(), "ab");
        assert!(decode(b"caf\xe9", "UTF-8", "x").is_err());
        assert!(decode(b"x", "EBCDIC-NOPE", "x").is_err());
    }
}
