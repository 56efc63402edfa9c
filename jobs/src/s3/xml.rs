//! The S3 XML depot reads (listings, upload ids, errors) and writes
//! (DeleteObjects, CompleteMultipartUpload), as serde structs through
//! quick-xml: a real parser, so entities, CDATA, comments and element
//! order are the parser's business, not a string search's. A reply that
//! does not parse is an error, never an empty listing. Keys read from a
//! listing are still checked against the prefix they were listed under
//! before they are used (client.rs).

use serde::{Deserialize, Serialize};

/// A reply that is not the XML it should be.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("the reply is not UTF-8")]
    Utf8(#[from] std::str::Utf8Error),
    #[error("the reply is not the XML expected: {0}")]
    De(#[from] quick_xml::DeError),
    #[error("cannot write the request's XML: {0}")]
    Se(#[from] quick_xml::SeError),
}

pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, XmlError> {
    Ok(quick_xml::de::from_str(std::str::from_utf8(body)?)?)
}

/// ListObjectsV2.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListBucketResult {
    #[serde(default)]
    pub contents: Vec<Object>,
    #[serde(default)]
    pub common_prefixes: Vec<CommonPrefix>,
    #[serde(default)]
    pub is_truncated: bool,
    pub next_continuation_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Object {
    pub key: String,
    #[serde(default)]
    pub size: u64,
    pub last_modified: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CommonPrefix {
    pub prefix: String,
}

/// ListMultipartUploads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListMultipartUploadsResult {
    #[serde(default)]
    pub upload: Vec<Upload>,
    #[serde(default)]
    pub is_truncated: bool,
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Upload {
    pub key: String,
    pub upload_id: String,
}

/// CreateMultipartUpload.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InitiateMultipartUploadResult {
    pub upload_id: String,
}

/// `<Error>`, alone or one per key refused in a DeleteObjects reply.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorDoc {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub key: String,
}

/// DeleteObjects' reply (quiet: only the keys it could not delete).
#[derive(Debug, Default, Deserialize)]
pub struct DeleteResult {
    #[serde(default, rename = "Error")]
    pub errors: Vec<ErrorDoc>,
}

/// The name of the document's root element, if it has one.
pub fn root(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let mut r = quick_xml::Reader::from_str(text);
    loop {
        match r.read_event() {
            Ok(quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e)) => {
                return Some(e.name().into_inner().to_owned());
            }
            Ok(quick_xml::events::Event::Eof) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[derive(Serialize)]
#[serde(rename = "Delete")]
struct Delete<'a> {
    #[serde(rename = "Quiet")]
    quiet: bool,
    #[serde(rename = "Object")]
    objects: Vec<DeleteKey<'a>>,
}

#[derive(Serialize)]
struct DeleteKey<'a> {
    #[serde(rename = "Key")]
    key: &'a str,
}

/// DeleteObjects' body (quiet).
pub fn delete_body(keys: &[String]) -> Result<String, XmlError> {
    let d = Delete { quiet: true, objects: keys.iter().map(|k| DeleteKey { key: k }).collect() };
    Ok(quick_xml::se::to_string_with_root("Delete", &d)?)
}

#[derive(Serialize)]
struct Complete<'a> {
    #[serde(rename = "Part")]
    parts: Vec<Part<'a>>,
}

#[derive(Serialize)]
struct Part<'a> {
    #[serde(rename = "PartNumber")]
    number: usize,
    #[serde(rename = "ETag")]
    etag: &'a str,
}

/// CompleteMultipartUpload's body: parts numbered from 1, in order.
pub fn complete_body(etags: &[String]) -> Result<String, XmlError> {
    let c = Complete { parts: etags.iter().enumerate().map(|(i, e)| Part { number: i + 1, etag: e }).collect() };
    Ok(quick_xml::se::to_string_with_root("CompleteMultipartUpload", &c)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing() {
        let x = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <Name>b</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><IsTruncated>true</IsTruncated>\
                 <NextContinuationToken>t&amp;1</NextContinuationToken>\
                 <Contents><Key>p/a&amp;b</Key><Size>12</Size><ETag>&quot;e&quot;</ETag><LastModified>2026-01-01T00:00:00.123Z</LastModified></Contents>\
                 <Contents><Key>p/&#x00e9;<!-- c --></Key><Size>0</Size></Contents>\
                 <CommonPrefixes><Prefix><![CDATA[p/r<1>/]]></Prefix></CommonPrefixes></ListBucketResult>";
        let l: ListBucketResult = parse(x.as_bytes()).unwrap();
        let keys: Vec<(&str, u64)> = l.contents.iter().map(|c| (c.key.as_str(), c.size)).collect();
        assert_eq!(keys, [("p/a&b", 12), ("p/é", 0)]);
        assert_eq!(l.contents[0].last_modified.as_deref(), Some("2026-01-01T00:00:00.123Z"));
        let cps: Vec<&str> = l.common_prefixes.iter().map(|c| c.prefix.as_str()).collect();
        assert_eq!(cps, ["p/r<1>/"]);
        assert!(l.is_truncated);
        assert_eq!(l.next_continuation_token.as_deref(), Some("t&1"));
        // An empty listing is a listing; what is not XML is an error.
        let e: ListBucketResult =
            parse(b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>").unwrap();
        assert!(e.contents.is_empty() && !e.is_truncated);
        assert!(parse::<ListBucketResult>(b"<ListBucketResult><Contents><Key>x</Contents>").is_err());
        assert!(parse::<ListBucketResult>(b"\xff\xfe").is_err());
    }

    #[test]
    fn uploads_errors_and_roots() {
        let u: ListMultipartUploadsResult = parse(
            b"<ListMultipartUploadsResult><Upload><Key>k1</Key><UploadId>u1</UploadId></Upload>\
              <Upload><Key>k2</Key><UploadId>u2</UploadId></Upload><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert_eq!(u.upload.len(), 2);
        assert_eq!((u.upload[1].key.as_str(), u.upload[1].upload_id.as_str()), ("k2", "u2"));
        let e: ErrorDoc =
            parse(b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>gone &lt;x&gt;</Message></Error>")
                .unwrap();
        assert_eq!((e.code.as_str(), e.message.as_str()), ("NoSuchKey", "gone <x>"));
        let d: DeleteResult = parse(
            b"<DeleteResult><Deleted><Key>a</Key></Deleted><Error><Key>b</Key><Code>AccessDenied</Code></Error></DeleteResult>",
        )
        .unwrap();
        assert_eq!((d.errors[0].key.as_str(), d.errors[0].code.as_str()), ("b", "AccessDenied"));
        assert_eq!(root(b"<?xml version=\"1.0\"?>\n<!-- x --><Error><Code>c</Code></Error>").as_deref(), Some("Error"));
        assert_eq!(root(b"<CopyObjectResult/>").as_deref(), Some("CopyObjectResult"));
        assert_eq!(root(b""), None);
    }

    #[test]
    fn request_bodies_are_escaped() {
        let body = delete_body(&["a<&>'\"b".to_owned(), "c".to_owned()]).unwrap();
        assert!(body.starts_with("<Delete><Quiet>true</Quiet><Object><Key>a&lt;&amp;&gt;"), "{body}");
        // What we write reads back as the keys given.
        #[derive(Deserialize)]
        struct Back {
            #[serde(rename = "Object")]
            objects: Vec<Key>,
        }
        #[derive(Deserialize)]
        struct Key {
            #[serde(rename = "Key")]
            key: String,
        }
        let back: Back = parse(body.as_bytes()).unwrap();
        assert_eq!(back.objects.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(), ["a<&>'\"b", "c"]);
        assert_eq!(
            complete_body(&["\"e1\"".to_owned(), "\"e2\"".to_owned()]).unwrap(),
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"e1\"</ETag></Part>\
             <Part><PartNumber>2</PartNumber><ETag>\"e2\"</ETag></Part></CompleteMultipartUpload>"
        );
    }
}
