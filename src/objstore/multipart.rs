//! Uploading a local file: one PUT up to twice the part size (`part-size` in the URL, 32 MiB
//! by default), a multipart upload of such parts above it (S3 caps one PUT at 5 GiB, and a
//! broken part costs one part, not the NAR). Every part streams from the file; an upload that fails is aborted, so
//! no orphaned parts are billed.

use http::Method;
use http_body_util::BodyExt;
use rusty_s3::S3Action;

use super::client::{full, hit_body, ok, Bucket, ObjError, VALID_FOR};

impl Bucket {
    /// Uploads the first `len` bytes of `hit` as `key`.
    pub async fn upload_file(
        &self,
        key: &str,
        hit: &crate::store::Hit,
        len: u64,
        ty: &str,
    ) -> Result<(), ObjError> {
        if len <= 2 * self.part_size {
            return self.put(key, hit_body(hit.clone(), 0, len), len, ty).await;
        }
        let id = self.create_multipart(key, ty).await?;
        let res = self.upload_parts(key, &id, hit, len).await;
        match res {
            Ok(etags) => self.complete_multipart(key, &id, etags).await,
            Err(e) => {
                self.abort_multipart(key, &id).await;
                Err(e)
            }
        }
    }

    async fn create_multipart(&self, key: &str, ty: &str) -> Result<String, ObjError> {
        let (s3, creds) = self.s3();
        let url = s3.create_multipart_upload(creds, key).sign(VALID_FOR);
        let resp = self.send(Method::POST, &url, full(""), Some(ty), 0).await?;
        ok(resp.status())?;
        let body = read_text(resp).await?;
        let parsed = rusty_s3::actions::CreateMultipartUpload::parse_response(&body)
            .map_err(|e| ObjError::Response(e.to_string()))?;
        Ok(parsed.upload_id().to_owned())
    }

    async fn upload_parts(
        &self,
        key: &str,
        id: &str,
        hit: &crate::store::Hit,
        len: u64,
    ) -> Result<Vec<String>, ObjError> {
        let (s3, creds) = self.s3();
        let mut etags = Vec::new();
        let mut offset = 0;
        while offset < len {
            let part = self.part_size.min(len - offset);
            let n = u16::try_from(etags.len() + 1).map_err(|_| ObjError::Status(413))?;
            let url = s3.upload_part(creds, key, n, id).sign(VALID_FOR);
            let body = hit_body(hit.clone(), offset, part);
            let resp = self.send(Method::PUT, &url, body, None, part).await?;
            ok(resp.status())?;
            let etag = resp.headers().get(http::header::ETAG);
            let etag = etag.and_then(|v| v.to_str().ok()).map(str::to_owned);
            etags.push(etag.ok_or_else(|| ObjError::Response("part without an ETag".into()))?);
            offset += part;
        }
        Ok(etags)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        id: &str,
        etags: Vec<String>,
    ) -> Result<(), ObjError> {
        let (s3, creds) = self.s3();
        let action = s3.complete_multipart_upload(creds, key, id, etags.iter().map(|e| e.as_str()));
        let url = action.sign(VALID_FOR);
        let body = action.body();
        let len = body.len() as u64;
        let resp = self.send(Method::POST, &url, full(body), None, len).await?;
        ok(resp.status())?;
        // S3 may answer 200 and still fail: the body says.
        let text = read_text(resp).await?;
        rusty_s3::actions::CompleteMultipartUploadResponse::parse(&text)
            .map(|_| ())
            .map_err(|e| ObjError::Response(e.to_string()))
    }

    async fn abort_multipart(&self, key: &str, id: &str) {
        let (s3, creds) = self.s3();
        let url = s3.abort_multipart_upload(creds, key, id).sign(VALID_FOR);
        if let Err(e) = self.send(Method::DELETE, &url, full(""), None, 0).await {
            tracing::warn!(key, error = %e, "object store: could not abort a multipart upload");
        }
    }
}

/// A small response body (an XML document) as text.
async fn read_text(resp: http::Response<hyper::body::Incoming>) -> Result<String, ObjError> {
    let body = resp.into_body().collect().await;
    let bytes = body
        .map_err(|e| ObjError::Response(e.to_string()))?
        .to_bytes();
    String::from_utf8(bytes.to_vec()).map_err(|e| ObjError::Response(e.to_string()))
}
