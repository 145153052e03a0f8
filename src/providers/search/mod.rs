//! The tenant's own Elasticsearch index with an index-scoped role and API key, through the
//! REST API. The Elasticsearch deployment is shared (Elastic Cloud on Google Cloud); its
//! region is a configuration fact, checked against the EU list at start.

pub mod elasticsearch;

pub use elasticsearch::SearchConfig;
