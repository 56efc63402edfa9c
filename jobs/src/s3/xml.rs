//! The few S3 XML replies depot reads (listings, upload ids, errors). They
//! are flat: elements are found by name, never nested in themselves, and
//! carry no attributes, so a scan is enough and no XML parser is needed.
//! The text comes from our own bucket; keys read from it are checked
//! against the prefix they were listed under before they are used.

/// The inner text of every `<tag>…</tag>` in `xml`, in order.
pub fn all<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

/// The first `<tag>`'s text, unescaped.
pub fn first(xml: &str, tag: &str) -> Option<String> {
    all(xml, tag).first().map(|s| unescape(s))
}

pub fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let Some(end) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let ent = &tail[1..end];
        let ch = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => out.push(c),
            None => out.push_str(&tail[..=end]),
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    out
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters cannot be written in XML 1.0 at all, even
            // escaped; S3 keys of ours never hold them (names are checked).
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing() {
        let x = "<ListBucketResult xmlns=\"x\"><Prefix>p/</Prefix><Contents><Key>p/a&amp;b</Key><ETag>&quot;e&quot;</ETag></Contents>\
                 <Contents><Key>p/&#x00e9;</Key></Contents><CommonPrefixes><Prefix>p/r/</Prefix></CommonPrefixes></ListBucketResult>";
        let keys: Vec<String> = all(x, "Contents").iter().filter_map(|c| first(c, "Key")).collect();
        assert_eq!(keys, ["p/a&b", "p/é"]);
        let cps: Vec<String> = all(x, "CommonPrefixes").iter().filter_map(|c| first(c, "Prefix")).collect();
        assert_eq!(cps, ["p/r/"]);
        assert_eq!(first(x, "ETag").as_deref(), Some("\"e\""));
        assert_eq!(unescape("a&bogus"), "a&bogus");
        assert_eq!(escape("a<&>'\""), "a&lt;&amp;&gt;&apos;&quot;");
    }
}
