package storage

// Versioned is implemented by objects whose store names the content it
// serves: an S3 or Azure ETag (plus the S3 version ID), a GCS generation.
// Open learns it from the metadata request it makes anyway. Two opens of
// the same URI that report the same Version (and size) serve the same
// bytes; any change to the object changes it. A local cache keys its
// entries by it, so it must never be empty for an object that has one.
type Versioned interface {
	// Version is the store's opaque name of the object's content, or ""
	// when the store gave none (the object then cannot be cached).
	Version() string
}
