//! depot's ingest pipeline, as plain functions over paths and readers: no
//! Redis, no async runtime. The daemon and the CLI are thin shells around
//! [`pipeline`].

pub mod archive;
pub mod bagit;
pub mod conflicts;
pub mod deposit;
pub mod error;
pub mod md5sums;
pub mod names;
pub mod pipeline;
pub mod plan;
pub mod publish;
pub mod report;
pub mod rotate;
pub mod s3;
pub mod scheme;
pub mod settings;
pub mod theia;
pub mod unpack;
pub mod validate;
pub mod verify;

pub use error::{Code, Error, Rejection, Result, Stage};
pub use settings::{Checks, Limits, Profile, Publish, PublishMode, PublishTarget, S3Settings, Settings};
