// Package gcs is the storage backend for Google Cloud Storage, on net/http:
// the JSON API for an object's attributes, listings and uploads, the XML
// API for ranged reads, and golang.org/x/oauth2/google for credentials.
//
// It does not use the Cloud Storage Go SDK (cloud.google.com/go/storage):
// linked into the c-shared library, the SDK and what it drags in (gRPC,
// xds/envoy protos, OpenTelemetry) tripled the library's size and cost
// every process that loads it ~10 ms before its first call, local files
// included (docs/benchmarks.md, "Fixed cost"), for a protocol this backend
// needs four requests of.
//
// URIs have the form gs://bucket/object. Object names are taken literally
// (no percent-decoding) and URIs are reported exactly as given.
//
// # Settings
//
// Configuration comes from storage.Settings, named after the environment
// variables that document it. The Go runtime copies the process
// environment once at start-up, so this package reads Settings only: an
// emulator host (STORAGE_EMULATOR_HOST) present only in the process
// environment, not in Settings, has no effect. The one exception is the ADC
// chain (neither file setting set, an authenticated endpoint), which looks
// at the process environment's GOOGLE_APPLICATION_CREDENTIALS as ADC
// defines it.
//
//   - RUNAI_STREAMER_GCS_CREDENTIAL_FILE: a credentials JSON file (a service
//     account key, or any other type Application Default Credentials
//     accepts: authorized_user, external_account, impersonated_service_account,
//     ...). Takes precedence over GOOGLE_APPLICATION_CREDENTIALS.
//   - GOOGLE_APPLICATION_CREDENTIALS: the same, as Application Default
//     Credentials name it.
//   - Neither set: the ADC chain (the gcloud well-known file, then the GCE/GKE
//     metadata server). New fails with storage.PermissionDenied when the chain
//     finds nothing.
//   - RUNAI_STREAMER_GCS_USE_ANONYMOUS_CREDENTIALS: "true" or "1" sends every
//     request unauthenticated (public buckets), whatever else is set; no
//     credentials are looked for.
//
// Credentials are requested with the read-only scope
// (devstorage.read_only) for reading and listing; Put (a checksum sidecar)
// asks for devstorage.read_write credentials when it is first called.
//
// The endpoint, first set wins (each names the root of the service; a URL
// with no path gets /storage/v1/ for the JSON API, reads go to the same host
// with XML API paths, /BUCKET/OBJECT):
//
//  1. MODEL_STREAMER_GCS_ENDPOINT: a full URL of the JSON API, e.g.
//     http://127.0.0.1:4443/storage/v1/, of a private endpoint or an emulator.
//     Authenticated with a credentials file (either of the two above) when
//     one is set, unauthenticated otherwise; the ADC chain and the metadata
//     server are never consulted.
//
//  2. CLOUD_STORAGE_EMULATOR_ENDPOINT, then its deprecated spelling
//     CLOUD_STORAGE_TESTBENCH_ENDPOINT: google-cloud-cpp's emulator
//     variables, which the reference's native reader honours, as a URL
//     (http://127.0.0.1:4443; "https://storage.googleapis.com" reads public
//     buckets of the real service anonymously). Unauthenticated, as
//     google-cloud-cpp does for an emulator, unless
//     RUNAI_STREAMER_GCS_CREDENTIAL_FILE names credentials explicitly
//     (GOOGLE_APPLICATION_CREDENTIALS, an ADC variable, does not).
//
//  3. STORAGE_EMULATOR_HOST: the Go and Python SDKs' emulator convention,
//     "HOST:PORT" (http assumed) or a URL whose path is replaced by
//     /storage/v1/. Always unauthenticated.
//
//  4. API_ENDPOINT_OVERRIDE: the Python SDK's (experimental) replacement of
//     https://storage.googleapis.com, a URL with scheme, e.g. a Private
//     Service Connect endpoint. Authenticated like the default endpoint
//     (credentials file, else the ADC chain), as the Python SDK does.
//
//  5. None: https://storage.googleapis.com, authenticated.
//
// Also:
//
//   - MODEL_STREAMER_STALL_TIMEOUT_MS: a request that receives nothing (no
//     response header, no body byte) for this long is aborted as a stalled
//     transfer (storage.Unavailable); default 30000, 0 disables. Waiting for
//     an access token counts as receiving nothing.
//   - RUNAI_STREAMER_S3_TRACE: "1" writes a line per HTTP request to the
//     storage endpoint (URL without its query, range, status, bytes,
//     timings; no secret) to model-streamer-trace-<pid>.log in the working
//     directory (package tracelog). Token requests are not traced.
//
// # Retries
//
// The engine retries storage.Unavailable reads per chunk with backoff,
// resuming at the last byte received and honouring storage.Error.RetryAfter.
// So a data read (ReadAt) is exactly one HTTP request, never retried nor
// reopened here: a body cut part way returns the bytes received with
// storage.Unavailable and the engine resumes from there. Metadata requests
// (Open's object attributes, List's pages) are not retried by the engine;
// the backend retries them on 408, 429, 5xx and connection errors (and a
// token endpoint's transient failure), up to MetadataAttempts attempts
// with jittered exponential backoff from 100 ms to 2 s, as the SDK did; a
// Retry-After is reported in the final error, not waited for. Put (a
// checksum sidecar: one JSON API media upload) is one request, not retried
// (without a generation precondition it is not idempotent), and checks the
// CRC32C the server reports for the new object.
//
// # Reads
//
// Open fetches the object's attributes (size, generation, crc32c, md5Hash:
// storage.Checksummed, storage.Versioned). ReadAt issues one
// ranged GET clipped to the size, for the generation Open saw, so every
// byte comes from the same version of the object: a replaced or deleted
// object fails with storage.NotFound instead of mixing versions. Reads ask
// for the stored bytes (ReadCompressed): an object uploaded with
// Content-Encoding gzip is streamed compressed, exactly its Size bytes,
// never transcoded: the request says Accept-Encoding: gzip itself, so Go's
// transport neither decompresses nor asks on its own, and an answer the
// server decompressed anyway (X-Goog-Stored-Content-Encoding gzip, no
// Content-Encoding gzip) is an error. A response that does not start at
// the requested offset (a server ignoring Range) is an error, never
// silently wrong data.
//
// Reads use the XML API, as the SDK's default read path did: GET
// /BUCKET/OBJECT?generation=N with Range, on the endpoint's host, the
// object name escaped as one path segment. Attributes and listing use the
// JSON API under the endpoint (b/BUCKET/o/OBJECT, b/BUCKET/o), uploads its
// /upload/storage/v1/ path on the endpoint's host.
//
// # Transport
//
// HTTP/1.1 only, up to MaxIdleConnsPerHost pooled connections per host:
// each read in flight gets its own TCP connection (as gcsfuse's default
// "http1" client protocol does), instead of all reads sharing the flow
// control of one HTTP/2 connection. No transparent decompression. A proxy
// comes from the process environment (HTTPS_PROXY, NO_PROXY) as in any Go
// program; loopback addresses are never proxied. Credentials must belong to
// the default universe (googleapis.com). Token requests go through a client
// of their own (30 s timeout), not this transport.
//
// # Tuning
//
// The engine's defaults for GCS (storage.Tuned) are ChunkBytes (16 MiB) per
// read and Concurrency (32) reads in flight. A GCS read pays a first-byte
// latency of tens of milliseconds and one connection carries on the order of
// a hundred or two MB/s, so a read must be long enough to amortise the
// latency (16 MiB at 150 MB/s is ~110 ms of transfer) and enough must be in
// flight to fill a VM's network (32 x 150 MB/s ~ 4.8 GB/s). Against
// fake-gcs-server on loopback a request costs ~0.6 ms and throughput is
// bound by the server's CPU, so there chunk sizes from 4 to 32 MiB and 1 to
// 64 reads in flight all land within noise of each other: the choice rests
// on the latency and per-connection figures above, and loopback only shows
// that the larger setting costs nothing.
package gcs

import (
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/tracelog"
)

// Setting names read by New.
const (
	SettingCredentialFile      = "RUNAI_STREAMER_GCS_CREDENTIAL_FILE"
	SettingADCFile             = "GOOGLE_APPLICATION_CREDENTIALS"
	SettingAnonymous           = "RUNAI_STREAMER_GCS_USE_ANONYMOUS_CREDENTIALS"
	SettingEndpoint            = "MODEL_STREAMER_GCS_ENDPOINT"
	SettingEmulatorEndpoint    = "CLOUD_STORAGE_EMULATOR_ENDPOINT"
	SettingTestbenchEndpoint   = "CLOUD_STORAGE_TESTBENCH_ENDPOINT"
	SettingEmulatorHost        = "STORAGE_EMULATOR_HOST"
	SettingAPIEndpointOverride = "API_ENDPOINT_OVERRIDE"
	SettingStallTimeoutMS      = "MODEL_STREAMER_STALL_TIMEOUT_MS"
)

// Defaults.
const (
	// ChunkBytes is the read size the engine uses for GCS objects unless
	// the caller sets one (storage.Tuned).
	ChunkBytes = 16 << 20
	// Concurrency is the number of reads the engine keeps in flight against
	// GCS unless the caller sets one (storage.Tuned).
	Concurrency = 32
	// DefaultStallTimeout aborts a request that receives nothing for this
	// long.
	DefaultStallTimeout = 30 * time.Second
	// MetadataAttempts bounds the attempts for one metadata request.
	MetadataAttempts = 5
	// MaxIdleConnsPerHost is the connection pool per host: at least the
	// largest concurrency a caller is expected to ask for.
	MaxIdleConnsPerHost = 128
)

// ReadOnlyScope is the OAuth scope requested for reads and listings;
// ReadWriteScope the one requested for Put.
const (
	ReadOnlyScope  = "https://www.googleapis.com/auth/devstorage.read_only"
	ReadWriteScope = "https://www.googleapis.com/auth/devstorage.read_write"
)

// DefaultEndpoint is the JSON API of Google Cloud Storage.
const DefaultEndpoint = "https://storage.googleapis.com/storage/v1/"

type backend struct {
	hc *http.Client
	// api is the JSON API's root URL, ending in "/" (.../storage/v1/);
	// host is its scheme://host, where the XML API (reads) and the upload
	// API are.
	api, host string
	auth      *authorizer // nil: requests go unauthenticated
	stall     time.Duration

	// newAuth makes credentials for a scope (nil: unauthenticated);
	// writeAuth is Put's, made on its first call.
	newAuth   func(scope string) (*authorizer, error)
	writeOnce sync.Once
	writeAuth *authorizer
	writeErr  error
}

// writer returns the credentials for Put (read_write scope).
func (b *backend) writer() (*authorizer, error) {
	if b.newAuth == nil {
		return nil, nil
	}
	b.writeOnce.Do(func() { b.writeAuth, b.writeErr = b.newAuth(ReadWriteScope) })
	return b.writeAuth, b.writeErr
}

var (
	_ storage.Backend = (*backend)(nil)
	_ storage.Lister  = (*backend)(nil)
	_ storage.Tuned   = (*backend)(nil)
)

// New returns a backend for gs:// URIs configured by settings (see the
// package documentation). It makes no request; with neither an endpoint nor
// a credentials file set, finding Application Default Credentials may probe
// the metadata server.
func New(settings storage.Settings) (storage.Backend, error) {
	b, code, err := newBackend(settings)
	var se *storage.Error
	switch {
	case errors.As(err, &se):
		return nil, err // classified already (the trace file)
	case err != nil:
		return nil, &storage.Error{Op: "configure gcs", Code: code, Err: err}
	}
	return b, nil
}

// DefaultChunkBytes is the read size the engine uses for objects of this
// backend unless the caller sets one.
func (b *backend) DefaultChunkBytes() int64 { return ChunkBytes }

// DefaultConcurrency is the number of reads the engine keeps in flight
// against this backend unless the caller sets one.
func (b *backend) DefaultConcurrency() int { return Concurrency }

func newBackend(s storage.Settings) (*backend, storage.Code, error) {
	stall := DefaultStallTimeout
	if v := strings.TrimSpace(s.Get(SettingStallTimeoutMS, "")); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			return nil, storage.InvalidArgument, fmt.Errorf("%s=%q: want milliseconds (0: no stall detection)", SettingStallTimeoutMS, v)
		}
		if ms == 0 {
			ms = math.MaxInt64 / int64(time.Millisecond) // 0 disables, as for every backend
		}
		stall = time.Duration(ms) * time.Millisecond
	}
	ep, err := endpointSetting(s)
	if err != nil {
		return nil, storage.InvalidArgument, err
	}
	endpoint := ep.url

	trace, err := tracelog.FromSettings(s)
	if err != nil {
		return nil, storage.CodeOf(err), err
	}
	b := &backend{
		// The trace sits nearest the wire, after the Authorization header
		// is set (which it never writes); token requests go through the
		// credentials' own client and are not traced.
		hc:    &http.Client{Transport: trace.Transport("gcs", newTransport(stall))},
		stall: stall,
	}
	if endpoint == "" {
		endpoint = DefaultEndpoint
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, storage.InvalidArgument, err
	}
	b.api, b.host = endpoint, u.Scheme+"://"+u.Host

	credFile, credSetting := s.Get(SettingCredentialFile, ""), SettingCredentialFile
	if credFile == "" && ep.auth != authExplicitFile {
		credFile, credSetting = s.Get(SettingADCFile, ""), SettingADCFile
	}
	switch {
	case s.Bool(SettingAnonymous, false) || ep.auth == authNone:
		// Unauthenticated; no credentials are looked for.
	case credFile != "":
		b.newAuth = func(scope string) (*authorizer, error) { return fileAuthorizer(credFile, scope) }
		a, err := b.newAuth(ReadOnlyScope)
		if err != nil {
			return nil, storage.InvalidArgument, fmt.Errorf("%s=%s: %w", credSetting, credFile, err)
		}
		b.auth = a
	case ep.auth != authDefault:
		// An emulator or private endpoint with no file: unauthenticated.
	default:
		b.newAuth = defaultAuthorizer
		a, err := b.newAuth(ReadOnlyScope)
		if err != nil {
			return nil, storage.PermissionDenied, fmt.Errorf("no Google credentials: set %s or %s, or %s=true for public buckets, or run where the metadata server provides them: %w",
				SettingCredentialFile, SettingADCFile, SettingAnonymous, err)
		}
		b.auth = a
	}
	return b, storage.Unknown, nil
}

// authMode is how requests to an endpoint authenticate when
// RUNAI_STREAMER_GCS_USE_ANONYMOUS_CREDENTIALS does not say "none".
type authMode int

const (
	// authDefault: a credentials file if either file setting names one,
	// else the ADC chain.
	authDefault authMode = iota
	// authAnyFile: a credentials file if either file setting names one,
	// else none.
	authAnyFile
	// authExplicitFile: RUNAI_STREAMER_GCS_CREDENTIAL_FILE if set, else
	// none (google-cloud-cpp reads an emulator anonymously unless given
	// credentials; it never consults ADC's variable then).
	authExplicitFile
	// authNone: always unauthenticated.
	authNone
)

// serviceEndpoint is the JSON API URL the settings select ("" for Google's), the
// setting that named it, and how requests to it authenticate.
type serviceEndpoint struct {
	url     string
	setting string
	auth    authMode
}

// endpointSetting returns the endpoint of the first setting set, in the
// order of the package documentation.
func endpointSetting(s storage.Settings) (serviceEndpoint, error) {
	for _, c := range []struct {
		setting string
		auth    authMode
	}{
		{SettingEndpoint, authAnyFile},
		{SettingEmulatorEndpoint, authExplicitFile},
		{SettingTestbenchEndpoint, authExplicitFile},
		{SettingEmulatorHost, authNone},
		{SettingAPIEndpointOverride, authDefault},
	} {
		v := strings.TrimSpace(s.Get(c.setting, ""))
		if v == "" {
			continue
		}
		var u string
		var err error
		if c.setting == SettingEmulatorHost {
			u, err = emulatorHostURL(v)
		} else {
			u, err = serviceURL(v)
		}
		if err != nil {
			return serviceEndpoint{}, fmt.Errorf("%s=%q: %w", c.setting, v, err)
		}
		return serviceEndpoint{url: u, setting: c.setting, auth: c.auth}, nil
	}
	return serviceEndpoint{}, nil
}

// serviceURL is the JSON API URL of an http(s) URL naming the service's
// root (a URL with no path gets /storage/v1/) or the JSON API itself.
func serviceURL(v string) (string, error) {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", errors.New("want an http:// or https:// URL")
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/storage/v1/"
	} else if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	return u.String(), nil
}

// emulatorHostURL is the JSON API URL of STORAGE_EMULATOR_HOST: HOST:PORT
// (http) or a URL whose path is replaced.
func emulatorHostURL(v string) (string, error) {
	u := &url.URL{Scheme: "http", Host: v}
	if strings.Contains(v, "://") {
		p, err := url.Parse(v)
		if err != nil || p.Host == "" {
			return "", errors.New("want HOST:PORT or a URL")
		}
		u = &url.URL{Scheme: p.Scheme, Host: p.Host}
	} else if _, _, err := net.SplitHostPort(v); err != nil && strings.ContainsAny(v, "/?#@") {
		return "", errors.New("want HOST:PORT or a URL")
	}
	u.Path = "/storage/v1/"
	return u.String(), nil
}

// newTransport is the HTTP transport: HTTP/1.1, a
// pool sized for many parallel reads, no transparent decompression, and
// response headers bounded by the stall timeout.
func newTransport(stall time.Duration) *http.Transport {
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   30 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     false,
		TLSNextProto:          map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxIdleConns:          4 * MaxIdleConnsPerHost,
		MaxIdleConnsPerHost:   MaxIdleConnsPerHost,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   min(stall, 10*time.Second),
		ResponseHeaderTimeout: stall,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ReadBufferSize:        64 << 10,
		WriteBufferSize:       16 << 10,
	}
}

// parseURI splits gs://bucket/object. The object may be empty (a bucket).
func parseURI(uri string) (bucket, object string, err error) {
	rest, ok := strings.CutPrefix(uri, "gs://")
	if !ok {
		return "", "", fmt.Errorf("not a gs:// URI")
	}
	bucket, object, _ = strings.Cut(rest, "/")
	if bucket == "" {
		return "", "", fmt.Errorf("no bucket in URI")
	}
	return bucket, object, nil
}

// objectURL is the JSON API URL of an object's attributes (Open).
func (b *backend) objectURL(bucket, name string) string {
	return b.api + "b/" + url.PathEscape(bucket) + "/o/" + url.PathEscape(name) +
		"?fields=" + url.QueryEscape(attrFields) + "&prettyPrint=false"
}

// listURL is the JSON API URL of a bucket's objects (List).
func (b *backend) listURL(bucket string) string {
	return b.api + "b/" + url.PathEscape(bucket) + "/o"
}

// mediaURL is the XML API URL of an object's bytes, on the endpoint's
// host: /BUCKET/OBJECT, the name escaped as one path segment ("/" as %2F,
// as the SDK sent it), pinned to a generation when there is one.
func (b *backend) mediaURL(bucket, name string, generation int64) string {
	u := b.host + "/" + url.PathEscape(bucket) + "/" + url.PathEscape(name)
	if generation > 0 {
		u += "?generation=" + strconv.FormatInt(generation, 10)
	}
	return u
}

// uploadURL is the JSON API's media upload URL of a bucket, at the root of
// the endpoint's host (/upload/storage/v1/...), as the SDK built it.
func (b *backend) uploadURL(bucket string) string {
	return b.host + "/upload/storage/v1/b/" + url.PathEscape(bucket) + "/o"
}
