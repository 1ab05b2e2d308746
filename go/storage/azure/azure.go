// Package azure is the storage backend for Azure Blob Storage: URIs of the
// form az://container/path/to/blob.
//
// # Settings
//
// New takes its configuration from storage.Settings, by the names of the
// environment variables that document it (the caller passes what it read
// from its environment; the Go runtime's copy of the environment is frozen
// when the process starts, so os.Getenv is not consulted for these).
//
// Where the account is:
//
//   - AZURE_STORAGE_ACCOUNT_NAME (alias AZURE_STORAGE_ACCOUNT): the storage
//     account; the endpoint is then https://<account>.<suffix>/, the suffix
//     being AZURE_STORAGE_ENDPOINT_SUFFIX (default blob.core.windows.net;
//     blob.core.chinacloudapi.cn, say, for a sovereign cloud).
//   - AZURE_STORAGE_ENDPOINT: the blob service URL, for private endpoints,
//     sovereign clouds or an emulator ("https://myaccount.privatelink.blob.core.windows.net",
//     "http://127.0.0.1:10000/devstoreaccount1"). It wins over the account
//     name, which is then optional. An endpoint without a scheme gets https://.
//
// How to authenticate, the first that applies:
//
//  1. AZURE_STORAGE_CONNECTION_STRING: an account connection string (the
//     Azurite form included). It carries its own endpoint and credentials;
//     the two settings above are ignored.
//  2. AZURE_STORAGE_ACCOUNT_KEY (alias AZURE_STORAGE_KEY): shared key
//     authentication. It needs the account name: AZURE_STORAGE_ACCOUNT_NAME,
//     or else the name is taken from AZURE_STORAGE_ENDPOINT (the first label
//     of the host name, or the first path segment for an IP address or
//     localhost endpoint, which is the emulator's path-style form).
//  3. AZURE_STORAGE_SAS_TOKEN: a shared access signature, with or without the
//     leading "?", appended to the endpoint.
//  4. Otherwise a Microsoft Entra ID token (which is only sent to an https
//     endpoint), from the first of the credentials below that applies.
//
// Entra ID credentials:
//
//   - AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_CLIENT_SECRET: a service
//     principal with a secret (azidentity.ClientSecretCredential).
//   - AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_CLIENT_CERTIFICATE_PATH
//     (+ AZURE_CLIENT_CERTIFICATE_PASSWORD): a service principal with a PEM
//     or PKCS#12 certificate (azidentity.ClientCertificateCredential).
//   - AZURE_FEDERATED_TOKEN_FILE (+ AZURE_CLIENT_ID, AZURE_TENANT_ID):
//     workload identity, as on AKS (azidentity.WorkloadIdentityCredential).
//   - Otherwise azidentity.DefaultAzureCredential (environment, workload
//     identity, managed identity, Azure CLI, Azure Developer CLI), with
//     AZURE_TENANT_ID from Settings. Its environment and managed-identity
//     steps read the process environment themselves: azidentity offers no
//     way to pass them in.
//
// AZURE_AUTHORITY_HOST, when set, selects the Entra authority (sovereign
// clouds) for all of them. Tokens are requested only when the first request
// needs one.
//
// Behaviour:
//
//   - MODEL_STREAMER_STALL_TIMEOUT_MS (default 30000; 0 disables): a data
//     request that delivers no byte (headers or body) for this long is
//     aborted and its ReadAt fails with storage.Unavailable, keeping the
//     bytes already received. Metadata requests (open, each list page) use
//     it as the SDK's per-try timeout.
//   - RUNAI_STREAMER_S3_TRACE: "1" writes a line per HTTP request (URL
//     without its query, range, status, bytes, timings; no secret) to
//     model-streamer-trace-<pid>.log in the working directory (package
//     tracelog).
//
// Requests use their own HTTP/1.1 connection pool (up to 256 idle
// connections per host); an HTTP proxy comes from the process environment
// (HTTPS_PROXY, NO_PROXY), as net/http reads it.
//
// # Retries
//
// Data reads (ReadAt) make exactly one HTTP request: the SDK's retry policy
// is turned off for them, and the response body is read directly, not
// through the SDK's auto-resuming RetryReader. The engine owns retries: it
// retries storage.Unavailable per chunk with backoff, honouring
// storage.Error.RetryAfter, and resumes from the last byte received, which
// ReadAt reports together with the error when a body breaks off. Metadata
// requests (Open's Get Blob Properties, List's pages), which the engine does
// not retry, keep the SDK's retry policy: up to 4 retries on 408, 429, 500,
// 502, 503, 504 and network errors, after about 250 ms, 750 ms, 1.75 s and
// 3.75 s (capped at 8 s), honouring Retry-After (a longer one ends the
// retries and is reported).
//
// # Errors
//
// Every error is a *storage.Error. HTTP failures keep the status and the
// service's error code in the message ("az://c/b: open: not found: HTTP 404
// BlobNotFound: The specified blob does not exist.") and unwrap to the SDK's
// *azcore.ResponseError. 404 is NotFound; 401 and 403 PermissionDenied;
// 408, 429 and 5xx Unavailable (with RetryAfter from Retry-After,
// retry-after-ms or x-ms-retry-after-ms); other 4xx InvalidArgument; 412 on a
// read (the blob was replaced after it was opened: reads are conditional on
// the ETag seen by Open, so bytes of two versions are never mixed) is
// NotFound. Network failures are Unavailable, except an unknown host name
// (no such account: NotFound) and a TLS certificate the endpoint does not
// match (InvalidArgument); context cancellation is Canceled; failure to get
// a token is PermissionDenied. Transport errors have any query string (a
// SAS token) removed from the URL they quote.
package azure

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/tracelog"
)

// Scheme is the URI scheme this backend serves.
const Scheme = "az"

// Setting names.
const (
	SettingAccountName      = "AZURE_STORAGE_ACCOUNT_NAME"
	SettingEndpoint         = "AZURE_STORAGE_ENDPOINT"
	SettingEndpointSuffix   = "AZURE_STORAGE_ENDPOINT_SUFFIX"
	SettingConnectionString = "AZURE_STORAGE_CONNECTION_STRING"
	SettingAccountKey       = "AZURE_STORAGE_ACCOUNT_KEY"
	SettingSASToken         = "AZURE_STORAGE_SAS_TOKEN"
	SettingStallTimeoutMS   = "MODEL_STREAMER_STALL_TIMEOUT_MS"

	settingAccountAlias = "AZURE_STORAGE_ACCOUNT" // az CLI's name
	settingKeyAlias     = "AZURE_STORAGE_KEY"     // az CLI's name
)

// Tuned defaults: see DefaultChunkBytes and DefaultConcurrency.
const (
	defaultChunkBytes  = 16 << 20
	defaultConcurrency = 32
)

// DefaultStallTimeout applies when MODEL_STREAMER_STALL_TIMEOUT_MS is unset.
const DefaultStallTimeout = 30 * time.Second

// Retry policy for metadata requests; data reads make one try.
var (
	metadataRetry = policy.RetryOptions{
		MaxRetries:    4,
		RetryDelay:    250 * time.Millisecond,
		MaxRetryDelay: 8 * time.Second,
	}
	dataRetry = policy.RetryOptions{MaxRetries: -1} // one try, no SDK retries
)

// Backend serves az:// URIs from one storage account.
type Backend struct {
	acct  *account
	stall time.Duration
	desc  string // endpoint and authentication, for messages
}

var (
	_ storage.Backend = (*Backend)(nil)
	_ storage.Lister  = (*Backend)(nil)
	_ storage.Tuned   = (*Backend)(nil)
)

// New returns the backend for the account settings describe (see the
// package documentation). It contacts nothing: credentials are checked by
// the first request.
func New(settings storage.Settings) (storage.Backend, error) {
	return newBackend(settings)
}

func newBackend(s storage.Settings) (*Backend, error) {
	stall := DefaultStallTimeout
	if v := strings.TrimSpace(s[SettingStallTimeoutMS]); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			return nil, configError(fmt.Errorf("%s=%q: want a non-negative number of milliseconds", SettingStallTimeoutMS, v))
		}
		stall = time.Duration(ms) * time.Millisecond
	}
	trace, err := tracelog.FromSettings(s)
	if err != nil {
		return nil, err
	}
	retry := metadataRetry
	retry.TryTimeout = stall
	opts := policy.ClientOptions{
		Transport: &http.Client{Transport: trace.Transport("azure", newTransport())},
		Retry:     retry,
		Telemetry: policy.TelemetryOptions{ApplicationID: "model-streamer"},
	}
	acct, desc, err := connect(s, opts)
	if err != nil {
		return nil, configError(err)
	}
	return &Backend{acct: acct, stall: stall, desc: desc}, nil
}

func configError(err error) error {
	return &storage.Error{Op: "configure", URI: Scheme + "://", Code: storage.InvalidArgument, Err: err}
}

// newTransport returns an HTTP/1.1 transport that keeps enough idle
// connections per host for many concurrent range reads. HTTP/2 is not
// attempted: one TCP connection per read in flight spreads a download over
// many congestion windows, which is what parallel range reads are for.
func newTransport() *http.Transport {
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     false,
		MaxIdleConns:          512,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		ReadBufferSize:        256 << 10,
		WriteBufferSize:       64 << 10,
	}
}

// DefaultChunkBytes is the read size the engine uses when the caller sets
// none: 16 MiB. Every Get Blob pays a first-byte latency (milliseconds on
// Azure, about 3 ms per request even from Azurite on loopback); 16 MiB
// amortises it, where 4 MiB reads ran at a third of the throughput of 8 to
// 32 MiB reads against Azurite (BenchmarkTuning).
func (b *Backend) DefaultChunkBytes() int64 { return defaultChunkBytes }

// DefaultConcurrency is the number of reads the engine keeps in flight when
// the caller sets none: 32. One connection to Azure Blob Storage carries far
// less than a VM's network bandwidth (tens of MB/s to about 100 MB/s), so
// throughput comes from many connections at once: 32 x 16 MiB keeps 512 MiB
// in flight, enough for a few GB/s at WAN latencies. Loopback measurements
// cannot show this (Azurite is one Node.js process and the client costs
// one copy per byte): there 4 to 32 reads in flight were within noise of
// each other and 64 was worse (BenchmarkTuning, BenchmarkReadAt).
func (b *Backend) DefaultConcurrency() int { return defaultConcurrency }

// String describes the endpoint and the authentication in use (no secrets).
func (b *Backend) String() string { return b.desc }

// parseURI splits az://container/blob. blob may be empty.
func parseURI(uri string) (containerName, blobName string, err error) {
	rest, ok := strings.CutPrefix(uri, Scheme+"://")
	if !ok {
		return "", "", fmt.Errorf("not an %s:// URI", Scheme)
	}
	containerName, blobName, _ = strings.Cut(rest, "/")
	if containerName == "" {
		return "", "", errors.New("no container name (want az://container/blob)")
	}
	return containerName, blobName, nil
}

// Open learns the blob's size and ETag (Get Blob Properties).
func (b *Backend) Open(ctx context.Context, uri string) (storage.Object, error) {
	c, name, err := parseURI(uri)
	if err == nil && name == "" {
		err = errors.New("no blob name (want az://container/blob)")
	}
	if err != nil {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.Canceled, Err: err}
	}
	bc, err := b.acct.blobClient(c, name)
	if err != nil {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	props, err := bc.GetProperties(ctx, nil)
	if err != nil {
		return nil, classify("open", uri, 0, 0, ctx, err)
	}
	if props.ContentLength == nil {
		return nil, &storage.Error{Op: "open", URI: uri, Code: storage.Internal, Err: errors.New("response has no Content-Length")}
	}
	o := &object{uri: uri, blob: bc, size: *props.ContentLength, stall: b.stall}
	if props.ETag != nil {
		o.etag = *props.ETag
	}
	o.sums, o.noSum = checksumsOf(props.ContentMD5)
	return o, nil
}

// List lists the blobs under uri, taken as a directory: az://c lists the
// container, az://c/dir (or az://c/dir/) the blobs whose names start with
// "dir/". Not recursive: only names with no further "/" (the service's
// hierarchical listing with delimiter "/"; virtual subdirectories are
// skipped). Directory placeholders are skipped too: blobs whose name ends
// in "/" and the directories of a hierarchical-namespace (Data Lake)
// account. An empty listing is not an error; a missing container is
// NotFound.
func (b *Backend) List(ctx context.Context, uri string, recursive bool) ([]storage.ObjectInfo, error) {
	c, prefix, err := parseURI(uri)
	if err != nil {
		return nil, &storage.Error{Op: "list", URI: uri, Code: storage.InvalidArgument, Err: err}
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	var out []storage.ObjectInfo
	err = b.acct.listBlobs(ctx, c, prefix, recursive, func(items []listedBlob) error {
		for _, it := range items {
			name, err := it.name()
			if err != nil {
				return fmt.Errorf("blob name %q: %w", it.Name.Text, err)
			}
			if name == "" || strings.HasSuffix(name, "/") {
				continue // a "directory marker" blob some tools create
			}
			if it.Properties.ResourceType == "directory" {
				continue // a directory of a hierarchical-namespace account
			}
			var size int64
			if it.Properties.ContentLength != nil {
				size = *it.Properties.ContentLength
			}
			out = append(out, storage.ObjectInfo{URI: Scheme + "://" + c + "/" + name, Size: size})
		}
		return nil
	})
	if err != nil {
		return nil, classify("list", uri, 0, 0, ctx, err)
	}
	sortInfos(out)
	return out, nil
}

// object is one opened blob.
type object struct {
	uri    string
	blob   *blob.Client
	size   int64
	etag   azcore.ETag
	stall  time.Duration
	closed atomic.Bool
	sums   []storage.Checksum // see checksumsOf (object.go)
	noSum  string
}

func (o *object) Size() int64 { return o.size }

// Close marks the object closed; later reads fail. It holds no connection.
func (o *object) Close() error {
	o.closed.Store(true)
	return nil
}

// endpointURL returns the blob service URL for the settings.
func endpointURL(s storage.Settings) (string, error) {
	if ep := strings.TrimSpace(s.Get(SettingEndpoint, "")); ep != "" {
		if !strings.Contains(ep, "://") {
			ep = "https://" + ep
		}
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" {
			return "", fmt.Errorf("%s=%q is not a URL", SettingEndpoint, ep)
		}
		if u.Scheme != "https" && u.Scheme != "http" {
			return "", fmt.Errorf("%s=%q: scheme must be https or http", SettingEndpoint, ep)
		}
		if !strings.HasSuffix(ep, "/") && u.RawQuery == "" {
			ep += "/"
		}
		return ep, nil
	}
	if acct := accountName(s); acct != "" {
		suffix := strings.Trim(strings.TrimSpace(s.Get(SettingEndpointSuffix, "")), "./")
		if suffix == "" {
			suffix = "blob.core.windows.net"
		}
		return "https://" + acct + "." + suffix + "/", nil
	}
	return "", fmt.Errorf("no storage account: set %s, %s or %s", SettingAccountName, SettingEndpoint, SettingConnectionString)
}

func accountName(s storage.Settings) string {
	return strings.TrimSpace(s.Get(SettingAccountName, s.Get(settingAccountAlias, "")))
}

// accountFromEndpoint guesses the account name of a blob endpoint: the first
// path segment of an emulator's path-style URL (IP address or localhost),
// else the first label of the host name.
func accountFromEndpoint(ep string) string {
	u, err := url.Parse(ep)
	if err != nil {
		return ""
	}
	host := u.Hostname()
	if net.ParseIP(host) != nil || host == "localhost" {
		seg, _, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
		return seg
	}
	label, _, _ := strings.Cut(host, ".")
	return label
}
